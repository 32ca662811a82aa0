"""The pure logic, without a database, Prefect or a process: runs in a second or two, before the
integration tests (`make test`)."""

import asyncio
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from pydantic import TypeAdapter, ValidationError

from control_plane.api.errors import add_error_handlers
from control_plane.bootstrap import _control_schedules, control_deployments
from control_plane.connectors import (
    DEFAULT_STREAM,
    MASK,
    SelectedStream,
    deep_merge,
    keep_secrets,
    mask_secrets,
)
from control_plane.connectors.airbyte import stream_state
from control_plane.deployments import DeploymentSpec
from control_plane.durations import check_staleness, minutes_if_number
from control_plane.errors import InvalidInput
from control_plane.notify import DeliveryFailed, SignedWebhook, failure, signature
from control_plane.settings import Settings
from control_plane.sync import Moved, StreamMoved
from models import BackfillRequest
from models.base import check_cron, check_timezone
from models.connector import Streams
from models.notifications import NotificationRoute, effective, hears

URL = "postgresql://bob:s3cret@db.example.com:5432/app"


class TestDeepMerge:
    def test_nested_dicts_merge_and_the_rest_is_replaced(self):
        base = {"a": {"x": 1, "y": 2}, "b": [1], "c": 1}
        assert deep_merge(base, {"a": {"y": 3}, "b": [2]}) == {
            "a": {"x": 1, "y": 3},
            "b": [2],
            "c": 1,
        }
        assert base == {"a": {"x": 1, "y": 2}, "b": [1], "c": 1}

    def test_a_dict_replaces_a_value_that_is_not_one(self):
        assert deep_merge({"a": 1}, {"a": {"x": 1}}) == {"a": {"x": 1}}


class TestSecrets:
    def test_a_url_password_is_masked_and_kept_when_sent_back(self):
        masked = mask_secrets("source", {"url": URL, "table": "t"})
        assert masked == {"url": f"postgresql://bob:{MASK}@db.example.com:5432/app", "table": "t"}
        assert keep_secrets("source", masked, {"url": URL}, field="config")["url"] == URL

    def test_a_mask_sent_to_another_host_is_refused(self):
        moved = {"url": f"postgresql://bob:{MASK}@evil.example.com:5432/app"}
        with pytest.raises(InvalidInput, match="another host"):
            keep_secrets("source", moved, {"url": URL}, field="config")


class TestInvalidInput:
    """Raised naming a model's own fields; the API's 422 names the model field as its bodies
    do, and never renames the keys after it (a tenant's config keys)."""

    @staticmethod
    def _answer(error: InvalidInput) -> dict:
        app = FastAPI()
        add_error_handlers(app)

        @app.post("/refuse")
        def refuse():
            raise error

        async def post() -> httpx.Response:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                return await client.post("/refuse")

        response = asyncio.run(post())
        assert response.status_code == 422
        [answer] = response.json()["detail"]
        return answer

    def test_a_config_problem_names_the_model_field_camelcase_and_the_keys_as_given(self):
        error = InvalidInput(
            "source_config_override",
            problems=[(("api_key",), "Field required"), ((), "Value error, outside")],
        )
        assert str(error) == (
            "source_config_override: source_config_override.api_key: Field required; "
            "source_config_override: Value error, outside"
        )
        assert self._answer(error) == {
            "loc": ["body", "sourceConfigOverride"],
            "msg": "sourceConfigOverride: sourceConfigOverride.api_key: Field required; "
            "sourceConfigOverride: Value error, outside",
            "type": "value_error",
        }

    @pytest.mark.parametrize(
        ("field", "loc"),
        [
            (
                "destination_config_override.bearer_token",
                ["destinationConfigOverride", "bearer_token"],
            ),
            ("config.api_key", ["config", "api_key"]),
            ("max_concurrent_runs", ["maxConcurrentRuns"]),
            ("Idempotency-Key", ["Idempotency-Key"]),
        ],
    )
    def test_only_the_first_segment_is_renamed(self, field, loc):
        answer = self._answer(InvalidInput(field, "send it"))
        assert answer["loc"] == ["body", *loc]
        assert answer["msg"] == f"{'.'.join(loc)}: send it"


class TestChecks:
    @pytest.mark.parametrize("cron", ["0 */4 * * *", "  0   3 1 * * "])
    def test_five_field_crons_pass(self, cron):
        assert check_cron(cron) == " ".join(cron.split())

    @pytest.mark.parametrize(
        ("cron", "says"), [("0 0 * * * *", "five fields"), ("0 0 30 2 *", "never fires")]
    )
    def test_others_are_refused_saying_why(self, cron, says):
        with pytest.raises(ValueError, match=says):
            check_cron(cron)

    def test_a_time_zone_is_an_iana_name(self):
        assert check_timezone("Europe/Berlin") == "Europe/Berlin"
        with pytest.raises(ValueError, match="IANA"):
            check_timezone("Mars/Olympus")

    def test_a_freshness_window_is_minutes_or_a_duration_within_bounds(self):
        assert minutes_if_number(90) == timedelta(minutes=90)
        assert minutes_if_number("PT1H") == "PT1H"
        assert check_staleness(timedelta(0)) == timedelta(0)
        with pytest.raises(ValueError, match="10 seconds"):
            check_staleness(timedelta(seconds=5))
        with pytest.raises(ValueError, match="366 days"):
            check_staleness(timedelta(days=400))


def _spec(**fields) -> DeploymentSpec:
    values = {
        "name": "connector-1",
        "schedule": "0 3 * * *",
        "timezone": "UTC",
        "parameters": {"connector_id": 1},
        "tags": ("connector:1", "control-plane"),
        "work_pool": "connectors",
        "work_queue": "destination-2",
    }
    return DeploymentSpec(**{**values, **fields})


def test_drift_names_each_field_that_differs():
    assert _spec().differences(_spec()) == []
    assert _spec().differences(_spec(schedule="0 4 * * *", paused=True)) == [
        "schedule: '0 4 * * *' -> '0 3 * * *'",
        "paused: True -> False",
    ]


@pytest.mark.parametrize(
    ("changes", "full", "expected"),
    [
        (300, 3600, [(300, False), (3600, True)]),
        (0, 3600, [(3600, True)]),
        (60, 0, [(60, False)]),
        (0, 0, []),
    ],
)
def test_reconcile_runs_passes_over_changes_and_full_passes_as_set(changes, full, expected):
    [entry] = [e for e in control_deployments() if e["name"] == "reconcile-connectors"]
    settings = Settings(reconcile_interval_seconds=changes, full_reconcile_interval_seconds=full)
    schedules = _control_schedules(entry, settings)
    assert [
        (s.schedule.interval.total_seconds(), s.parameters["full"]) for s in schedules
    ] == expected


class TestNotifications:
    def test_a_connector_without_routes_takes_its_projects(self):
        project = [NotificationRoute(events=["stale"], channel="slack-webhook/team")]
        assert effective(None, project) == [{"events": ["stale"], "channel": "slack-webhook/team"}]
        assert effective([], project) == []

    def test_only_routes_that_hear_the_event_are_told(self):
        routes = [
            {"events": ["run-failed", "stale"], "channel": "signed-webhook/ops"},
            {"events": ["fresh"], "channel": "slack-webhook/team"},
        ]
        assert hears(routes, "connector.stale") == ["signed-webhook/ops"]
        assert hears(routes, "connector.synced") == []

    def test_a_signature_is_the_hmac_of_time_and_body(self):
        signed = signature(b"secret", "1700000000", b'{"a":1}')
        assert signed == signature(b"secret", "1700000000", b'{"a":1}')
        assert signed != signature(b"secret", "1700000001", b'{"a":1}')
        assert signed != signature(b"other", "1700000000", b'{"a":1}')

    def test_a_failed_delivery_says_why_without_the_receivers_url(self):
        url = "https://hooks.example.com/services/T0KEN"
        request = httpx.Request("POST", url)
        response = httpx.Response(404, request=request)
        answered = httpx.HTTPStatusError(url, request=request, response=response)
        reasons = [
            failure(answered),
            failure(httpx.ConnectError(f"cannot connect to {url}", request=request)),
            failure(DeliveryFailed("the receiver answered 500 Internal Server Error")),
            failure(RuntimeError(url)),
        ]
        assert reasons == [
            "the receiver answered 404 Not Found",
            "the receiver cannot be reached: ConnectError",
            "the receiver answered 500 Internal Server Error",
            "the block failed: RuntimeError",
        ]

    @pytest.mark.parametrize(
        ("fields", "says"),
        [
            ({"url": "ftp://x", "secret": "s" * 16}, "http"),
            ({"url": "https://x", "secret": "short"}, "16 characters"),
        ],
    )
    def test_a_signed_webhook_needs_an_http_url_and_a_long_secret(self, fields, says):
        with pytest.raises(ValueError, match=says):
            SignedWebhook(**fields)


class TestSelectedStreams:
    @pytest.mark.parametrize(
        ("stream", "message"),
        [
            ({"syncMode": "incremental"}, "syncMode incremental needs cursorField"),
            ({"syncMode": "merge"}, "syncMode merge needs primaryKey"),
            ({"cursorField": "id"}, "syncMode full_refresh reads everything"),
            (
                {"syncMode": "incremental", "cursorField": "at", "columns": ["id"]},
                "columns must include at",
            ),
        ],
    )
    def test_a_mode_without_what_it_needs_is_refused(self, stream, message):
        with pytest.raises(ValidationError, match=message):
            SelectedStream.model_validate({"name": "public.orders", **stream})

    def test_the_target_is_the_name_without_its_namespace(self):
        assert SelectedStream(name="public.orders").target == "orders"
        assert SelectedStream(name="public.orders", destination_name="raw.o").target == "raw.o"
        assert SelectedStream(name=DEFAULT_STREAM).target is None

    def test_two_streams_with_one_name_or_one_target_are_refused(self):
        streams = TypeAdapter(Streams)
        with pytest.raises(ValidationError, match="each stream's name must differ: a twice"):
            streams.validate_python([{"name": "a"}, {"name": "a"}])
        with pytest.raises(ValidationError, match="destinationName must differ: orders twice"):
            streams.validate_python([{"name": "public.orders"}, {"name": "sales.orders"}])


class TestBackfillWindow:
    @pytest.mark.parametrize(
        ("window", "message"),
        [
            ({"from": 5, "to": 1}, r"from \(5\) comes after to \(1\)"),
            ({"from": "2026-02", "to": "2026-01"}, "comes after"),
            ({"from": None, "to": 1}, "from.constrained-str\n  Input should be a valid string"),
            ({"from": {"a": 1}, "to": 1}, "from.int\n  Input should be a valid integer"),
            ({"from": True, "to": 2}, "from.float\n  Input should be a valid number"),
        ],
    )
    def test_a_window_of_no_cursor_values_is_refused(self, window, message):
        with pytest.raises(ValidationError, match=message):
            BackfillRequest.model_validate(window)

    def test_ends_of_mixed_types_are_left_to_the_database(self):
        request = BackfillRequest.model_validate({"stream": "s", "from": 1, "to": "2026"})
        assert (request.stream, request.start, request.end) == ("s", 1, "2026")


class TestMoved:
    def test_a_failed_stream_is_named_and_only_loaded_ones_keep_cursors(self):
        moved = Moved(
            [StreamMoved("a", 3, 3, cursor=7), StreamMoved("b", error="LookupError: gone")], 1.0
        )
        assert (
            moved.failure
            == "1 of 2 streams failed, the others were loaded: stream 'b': LookupError: gone"
        )
        assert moved.cursors == {"a": 7}
        assert (moved.records_read, moved.records_written) == (3, 3)

    def test_one_stream_fails_with_its_own_error_and_a_backfill_saves_no_cursor(self):
        assert (
            Moved([StreamMoved("default", error="ValueError: x")], 1.0).failure == "ValueError: x"
        )
        assert Moved([StreamMoved("default", cursor=1)], 1.0, backfill=True).cursors == {}


class TestAirbyteState:
    def test_a_stream_state_is_its_own_and_the_legacy_form_is_the_whole(self):
        state = {
            "type": "STREAM",
            "stream": {"stream_descriptor": {"name": "users"}, "stream_state": {"at": 1}},
        }
        assert stream_state(state, "users") == {"at": 1}
        assert stream_state(state, "products") is None
        assert stream_state({"data": {"users": 2}}, "users") == {"users": 2}
