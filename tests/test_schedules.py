"""Schedule previews: the run times are Prefect's own (its schedule code across DST transitions,
its real scheduler on the session's server), and what DST does to a schedule is said in the
preview and as a warning on create and PATCH, never blocking them."""

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.server.schemas.schedules import CronSchedule

from bench._seed import Catalog, created
from control_plane import schedules
from control_plane.api.auth import READ
from control_plane.processes import wait_for
from tests.conftest import AuthApi, Stack
from tests.helpers import execute, scheduled_runs

# The next transitions after today in two zones: (zone, spring forward, fall back), UTC.
TRANSITIONS = [
    (
        "America/New_York",
        datetime(2027, 3, 14, 7, tzinfo=UTC),
        datetime(2027, 11, 7, 6, tzinfo=UTC),
    ),
    ("Europe/Berlin", datetime(2027, 3, 28, 1, tzinfo=UTC), datetime(2027, 10, 31, 1, tzinfo=UTC)),
]
CRONS = ["30 2 * * *", "30 1 * * *", "0 9 * * *", "0 * * * *", "*/20 * * * *", "0 2 * * 0"]


def _prefects(cron: str, zone: str, count: int, start: datetime) -> list[datetime]:
    dates = asyncio.run(CronSchedule(cron=cron, timezone=zone).get_dates(n=count, start=start))
    return [datetime.fromtimestamp(date.timestamp(), UTC) for date in dates]


class TestPrefectsOwnTimes:
    @pytest.mark.parametrize("cron", CRONS)
    @pytest.mark.parametrize("zone,spring,fall", TRANSITIONS)
    def test_across_both_transitions_the_preview_is_prefects(self, cron, zone, spring, fall):
        for transition in (spring, fall):
            start = transition - timedelta(days=2)
            preview = schedules.preview(cron, zone, 60, start)
            assert [run.at for run in preview] == _prefects(cron, zone, 60, start)
            assert all(run.local.utcoffset() is not None for run in preview)

    def test_the_transitions_are_found_to_the_minute(self):
        [(zone, spring, fall)] = TRANSITIONS[:1]
        found = schedules.transitions_in(zone, 2027)
        assert [(t.at, t.gap) for t in found] == [
            (spring, timedelta(hours=1)),
            (fall, -timedelta(hours=1)),
        ]


class TestWhatDstDoes:
    def test_a_time_the_spring_forward_day_lacks_moves_forward(self):
        start = datetime(2027, 3, 13, tzinfo=UTC)
        runs = schedules.preview("30 2 * * *", "America/New_York", 3, start)
        moved = runs[1]
        assert moved.local.isoformat() == "2027-03-14T03:30:00-04:00"
        assert moved.dst is not None and "02:30 does not exist on Sun 14 Mar 2027" in moved.dst
        assert "Prefect runs it at 03:30" in moved.dst
        assert runs[0].dst is None and runs[2].dst is None

    def test_runs_moved_onto_due_ones_are_counted_as_fewer(self):
        [warning, repeated] = schedules.warnings(
            "*/20 * * * *", "Europe/Berlin", datetime(2027, 3, 1, tzinfo=UTC)
        )
        assert "02:00 and 02:20 and 02:40 do not exist on Sun 28 Mar 2027" in warning
        assert "that day has 3 runs fewer" in warning
        assert "happen twice on Sun 31 Oct 2027" in repeated

    def test_a_time_the_fall_back_day_has_twice_runs_once(self):
        start = datetime(2027, 11, 6, tzinfo=UTC)
        runs = schedules.preview("30 1 * * *", "America/New_York", 3, start)
        once = [run for run in runs if run.at.date() == datetime(2027, 11, 7).date()]
        assert [run.local.isoformat() for run in once] == ["2027-11-07T01:30:00-04:00"]
        assert "happens twice" in once[0].dst and "runs it once, at the first (EDT)" in once[0].dst

    def test_a_longer_interval_is_shown_but_is_no_warning(self):
        start = datetime(2027, 11, 6, tzinfo=UTC)
        runs = schedules.preview("0 9 * * *", "America/New_York", 3, start)
        assert "comes 25 h after the one before, not 24 h" in runs[1].dst
        assert schedules.warnings("0 9 * * *", "America/New_York", start) == []

    def test_a_run_moved_past_a_later_one_comes_in_order(self):
        # Lord Howe's gap is 30 minutes: 02:25 moves to 02:55, after 02:40's run at 02:40.
        start = datetime(2027, 10, 2, 15, tzinfo=UTC)
        runs = schedules.preview("25,40 2 * * *", "Australia/Lord_Howe", 3, start)
        assert [f"{run.local:%H:%M}" for run in runs] == ["02:40", "02:55", "02:25"]
        assert runs[0].dst is None and "02:25 does not exist" in runs[1].dst
        assert schedules.next_fire("25,40 2 * * *", "Australia/Lord_Howe", start) == runs[0].at

    def test_the_first_and_last_runs_get_their_notes_too(self):
        [_, last] = schedules.preview(
            "30 1 * * *", "America/New_York", 2, datetime(2027, 11, 6, tzinfo=UTC)
        )
        assert "happens twice" in last.dst
        [moved] = schedules.preview(
            "30 2 * * *", "America/New_York", 1, datetime(2027, 3, 14, 7, 10, tzinfo=UTC)
        )
        assert "does not exist" in moved.dst

    def test_utc_and_manual_schedules_have_nothing_to_say(self):
        now = datetime(2027, 1, 1, tzinfo=UTC)
        assert schedules.warnings("30 2 * * *", "UTC", now) == []
        assert schedules.warnings(None, "America/New_York", now) == []


class TestPreviewApi:
    def test_previews_a_schedule_before_any_connector_has_it(self, api: httpx.Client):
        body = {"schedule": "30 2 * * *", "timezone": "America/New_York", "count": 3}
        answer = api.post("/schedules/preview", json={**body, "start": "2027-03-13T00:00:00Z"})
        assert answer.status_code == 200, answer.text
        preview = answer.json()
        assert [run["localTime"] for run in preview["runs"]] == [
            "2027-03-13T02:30:00-05:00",
            "2027-03-14T03:30:00-04:00",
            "2027-03-15T02:30:00-04:00",
        ]
        assert preview["runs"][1]["at"] == "2027-03-14T07:30:00Z"
        assert len(preview["warnings"]) == 2  # the spring-forward day, and the fall-back one

    @pytest.mark.parametrize(
        "change,field",
        [
            ({"timezone": "Mars/Olympus"}, "timezone"),
            ({"timezone": "right/UTC"}, "timezone"),  # zoneinfo reads it, Prefect does not
            ({"schedule": "0 0 1W * *"}, "schedule"),  # croniter reads it, Prefect's does not
            ({"count": 0}, "count"),
            ({"schedule": "daily"}, "schedule"),
            ({"start": "9999-12-31T00:00:00Z"}, "start"),
        ],
    )
    def test_bad_input_names_the_field(self, api: httpx.Client, change, field):
        body = {"schedule": "30 2 * * *", "timezone": "UTC", **change}
        answer = api.post("/schedules/preview", json=body)
        assert answer.status_code == 422
        assert field in answer.text

    def test_a_read_only_token_may_preview(self, auth_api: AuthApi):
        with auth_api.client(auth_api.token(scopes=[READ])) as client:
            answer = client.post("/schedules/preview", json={"schedule": "0 * * * *"})
        assert answer.status_code == 200, answer.text


class TestConnectorSchedules:
    def test_create_and_patch_warn_without_blocking(self, api: httpx.Client, catalog: Catalog):
        spec = catalog.connector(schedule="30 2 * * *", timezone="America/New_York")
        response = api.post("/connectors", json=spec)
        connector = created(response)
        warnings = connector["scheduleWarnings"]
        assert any("02:30 does not exist" in warning for warning in warnings)
        assert response.headers.get_list("Warning") == [
            f'299 control-plane "{warning}"' for warning in warnings
        ]
        changed = api.patch(f"/connectors/{connector['id']}", json={"schedule": "0 9 * * *"})
        assert changed.status_code == 200, changed.text
        assert changed.json()["scheduleWarnings"] == []
        assert "Warning" not in changed.headers

    def test_the_preview_is_what_prefects_scheduler_creates(
        self, api: httpx.Client, prefect: SyncPrefectClient, catalog: Catalog
    ):
        # Kathmandu is UTC+05:45: a zone's offset that is not whole hours shows in every run.
        spec = catalog.connector(schedule="*/5 * * * *", timezone="Asia/Kathmandu")
        connector = created(api.post("/connectors", json=spec))
        runs = wait_for(
            lambda: (
                len(found := scheduled_runs(prefect, connector["prefectDeploymentId"])) >= 3
                and found
            ),
            timeout=60,
            what="Prefect's scheduler to create the connector's runs",
        )
        times = sorted(run.expected_start_time for run in runs)
        first = datetime.fromtimestamp(times[0].timestamp(), UTC)
        preview = api.get(
            f"/connectors/{connector['id']}/schedule",
            params={"count": len(times), "start": first.isoformat()},
        ).json()
        assert [datetime.fromisoformat(run["at"]) for run in preview["runs"]] == times
        assert preview["runs"][0]["localTime"].endswith("+05:45")
        upcoming = api.get(f"/connectors/{connector['id']}/schedule").json()["runs"]
        assert datetime.fromisoformat(upcoming[0]["at"]) == datetime.fromisoformat(
            api.get(f"/connectors/{connector['id']}").json()["nextRunAt"]
        )
        # Every five minutes would keep the session's workers busy.
        assert api.delete(f"/connectors/{connector['id']}").status_code == 204

    def test_a_value_stored_before_prefect_was_asked_still_reads(
        self, api: httpx.Client, stack: Stack, catalog: Catalog
    ):
        spec = catalog.connector(schedule="0 0 1 * *", isActive=False)
        connector = created(api.post("/connectors", json=spec))
        # croniter reads "1W" (the weekday nearest the 1st); Prefect's croniter does not.
        execute(
            stack.database_url,
            f"UPDATE connector SET schedule = '0 0 1W * *' WHERE id = {connector['id']}",
        )
        stored = api.get(f"/connectors/{connector['id']}")
        assert stored.status_code == 200, stored.text
        assert stored.json()["schedule"] == "0 0 1W * *"
        assert "change them to activate" in stored.json()["scheduleWarnings"][0]
        refused = api.patch(f"/connectors/{connector['id']}", json={"isActive": True})
        assert refused.status_code == 422 and "schedule" in refused.text

    def test_an_inactive_connector_has_no_runs_but_its_warnings(
        self, api: httpx.Client, catalog: Catalog
    ):
        spec = catalog.connector(schedule="30 2 * * *", timezone="Europe/Berlin", isActive=False)
        connector = created(api.post("/connectors", json=spec))
        preview = api.get(f"/connectors/{connector['id']}/schedule").json()
        assert preview["runs"] == []
        assert preview["warnings"] == connector["scheduleWarnings"] != []
