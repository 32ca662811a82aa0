"""The example programs in examples/, run as they are against the session's real stack: each
walks a connector through its life, and Prefect shows every step as a completed control flow
run. The Python one also rides out an API restart in the middle of its run."""

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import StateType

from bench._seed import unique
from control_plane.processes import api_server, free_port, running, wait_for
from tests.conftest import AuthApi, Stack
from tests.helpers import POSTGRESQL_ONLY, control_runs, wait_final

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PYTHON_EXAMPLE = EXAMPLES / "python" / "connector_lifecycle_example.py"
JAVA_EXAMPLE = EXAMPLES / "java" / "ConnectorLifecycleExample.java"
JACKSON_JARS = [
    Path("/usr/share/java/jackson-databind.jar"),
    Path("/usr/share/java/jackson-core.jar"),
    Path("/usr/share/java/jackson-annotations.jar"),
]
INSTALL_JAVA = "apt-get update && apt-get install -y default-jdk-headless libjackson2-databind-java"
# Settings of the programs that would point them at other objects, or turn auth on.
PROGRAM_SETTINGS = ("AUTH_TOKEN", "PROJECT_ID", "DEFINED_SOURCE_ID", "DEFINED_DESTINATION_ID")
# Above the programs' own 120 s wait for the triggered run, so theirs fails first, with a reason.
PROGRAM_TIMEOUT = 180
PASSED = "PASSED: all 5 lifecycle steps (create, reschedule, trigger, deactivate, delete)"


@dataclass
class Transcript:
    """What a program printed, and what it says about the connector it made."""

    stdout: str
    stderr: str

    def _find(self, pattern: str) -> str:
        match = re.search(pattern, self.stdout, re.MULTILINE)
        assert match, f"no {pattern!r} in the output:\n{self.stdout}\n{self.stderr}"
        return match.group(1)

    @property
    def connector_id(self) -> int:
        # Step 1 shows the new connector as "   id=7  prefectDeploymentId=...".
        return int(self._find(r"^\s+id=(\d+)\s+prefectDeploymentId="))

    @property
    def connector_name(self) -> str:
        # Every name the program makes ends in the same suffix, the project's first.
        suffix = self._find(r"^\s+id=\d+\s+name=Lifecycle example (\S+)$")
        return f"Customer Data Pipeline {suffix}"

    @property
    def flow_run_id(self) -> UUID:
        return UUID(self._find(r"^\s+status=success\s+result=.*\s+flowRunId=(\S+)$"))


def _program_env(stack: Stack, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROGRAM_SETTINGS}
    # FILES_DIR: the programs write their CSV into the project's folder under the stack's file
    # root, where its worker reads it; TMPDIR keeps anything else under the test's directory.
    files = {"FILES_DIR": str(stack.files), "TMPDIR": str(tmp_path)}
    return {**env, "BASE_URL": stack.api_url, **files, **extra}


def _run(command: list[str], env: dict[str, str]) -> Transcript:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=PROGRAM_TIMEOUT)
    transcript = Transcript(done.stdout, done.stderr)
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return transcript


def _assert_passed(transcript: Transcript) -> None:
    last = transcript.stdout.rstrip().splitlines()[-1]
    assert last == PASSED, f"{transcript.stdout}\n{transcript.stderr}"
    assert "FAILED" not in transcript.stderr, transcript.stderr


def _assert_whole_lifecycle(
    transcript: Transcript, prefect: SyncPrefectClient, api: httpx.Client
) -> None:
    """Prefect shows one completed control flow run per step, and the connector is gone."""
    connector_id, name = transcript.connector_id, transcript.connector_name
    runs = control_runs(prefect, connector_id)
    assert [run.name for run in runs] == [
        f"create connector {connector_id}: {name}",
        f"reschedule connector {connector_id} to 0 */6 * * *",
        f"trigger connector {connector_id}",
        f"deactivate connector {connector_id}",
        f"delete connector {connector_id}",
    ]
    for run in runs:
        assert run.state.type == StateType.COMPLETED, (run.name, run.state)
    # The run the trigger started, which the worker executes: the program followed it through
    # /runs to the end (without that route it would only wait 5 s, and might delete the
    # connector under a run that has yet to start).
    assert f"flowRunId={transcript.flow_run_id}  state=COMPLETED" in transcript.stdout
    sync_run = wait_final(prefect, transcript.flow_run_id, timeout=60)
    assert sync_run.state.type == StateType.COMPLETED, sync_run.state
    response = api.get(f"/connectors/{connector_id}")
    assert response.status_code == 404, response.text


@dataclass
class JavaBuild:
    """The Java example compiled, or why it could not be."""

    classpath: str | None = None
    problem: str | None = None


@pytest.fixture(scope="module")
def java_build(tmp_path_factory: pytest.TempPathFactory) -> JavaBuild:
    """The Java example compiled once for all databases. A missing JDK or Jackson is the
    test's failure (with the command that installs them), never a skip."""
    missing = [tool for tool in ("javac", "java") if shutil.which(tool) is None]
    missing += [str(jar) for jar in JACKSON_JARS if not jar.is_file()]
    if missing:
        return JavaBuild(
            problem=f"The Java example needs {', '.join(missing)}. Install with: {INSTALL_JAVA}"
        )
    jackson = os.pathsep.join(str(jar) for jar in JACKSON_JARS)
    build = tmp_path_factory.mktemp("java-build")
    done = subprocess.run(
        ["javac", "-cp", jackson, "-d", str(build), str(JAVA_EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        return JavaBuild(problem=f"javac failed:\n{done.stdout}\n{done.stderr}")
    return JavaBuild(classpath=os.pathsep.join([str(build), jackson]))


class TestPythonExample:
    def test_walks_a_connector_through_its_life(
        self, stack: Stack, prefect: SyncPrefectClient, api: httpx.Client, tmp_path: Path
    ):
        transcript = _run([sys.executable, str(PYTHON_EXAMPLE)], _program_env(stack, tmp_path))
        _assert_passed(transcript)
        assert "retry" not in transcript.stdout
        _assert_whole_lifecycle(transcript, prefect, api)


class TestJavaExample:
    def test_walks_a_connector_through_its_life(
        self,
        java_build: JavaBuild,
        stack: Stack,
        prefect: SyncPrefectClient,
        api: httpx.Client,
        tmp_path: Path,
    ):
        if java_build.problem:
            pytest.fail(java_build.problem, pytrace=False)
        command = ["java", f"-Djava.io.tmpdir={tmp_path}", "-cp", str(java_build.classpath)]
        transcript = _run([*command, "ConnectorLifecycleExample"], _program_env(stack, tmp_path))
        _assert_passed(transcript)
        assert "retry" not in transcript.stdout
        _assert_whole_lifecycle(transcript, prefect, api)


class TestPythonExampleRetries:
    @POSTGRESQL_ONLY
    def test_rides_out_an_api_restart(
        self, stack: Stack, prefect: SyncPrefectClient, api: httpx.Client, tmp_path: Path
    ):
        """An API of the test's own, on the stack's database and Prefect, stops once the
        program has its connector and a triggered run, and starts again once the program is
        retrying; the program finishes every step exactly once."""
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
        env = _program_env(stack, tmp_path, BASE_URL=url, MAX_RETRIES="10", PYTHONUNBUFFERED="1")
        with (
            running(api_server(stack.env, port, tmp_path / "api.log"), f"{url}/health") as server,
            stdout.open("w") as out,
            stderr.open("w") as err,
        ):
            program = subprocess.Popen(
                [sys.executable, str(PYTHON_EXAMPLE)], env=env, stdout=out, stderr=err
            )

            def printed(pattern: str) -> bool:
                if program.poll() is not None:
                    raise AssertionError(
                        f"the program exited with {program.returncode} too early:\n"
                        f"{stdout.read_text()}\n{stderr.read_text()}"
                    )
                return re.search(pattern, stdout.read_text(), re.MULTILINE) is not None

            try:
                # Stop while the program only reads (it waits for its run): a SIGTERM that
                # lands during a control flow is taken by Prefect's flow engine, and the
                # request in flight answers 500 instead of finishing before the API stops.
                wait_for(
                    lambda: printed(r"^\s+status=success\s+.*flowRunId="),
                    timeout=60,
                    what="the program to create and trigger its connector",
                    interval=0.05,
                )
                server.stop()
                wait_for(
                    lambda: printed(r"^\s+retry 1/10 in .*: connection failed"),
                    timeout=30,
                    what="the program to retry",
                )
                server.start().wait_healthy(f"{url}/health")
                program.wait(timeout=PROGRAM_TIMEOUT)
            finally:
                if program.poll() is None:
                    program.kill()
                    program.wait()

        transcript = Transcript(stdout.read_text(), stderr.read_text())
        assert program.returncode == 0, f"{transcript.stdout}\n{transcript.stderr}"
        _assert_passed(transcript)
        assert re.search(r"retry \d+/10 in .*: connection failed", transcript.stdout)
        _assert_whole_lifecycle(transcript, prefect, api)


def _command(language: str, java_build: JavaBuild, tmp_path: Path) -> list[str]:
    if language == "python":
        return [sys.executable, str(PYTHON_EXAMPLE)]
    if java_build.problem:
        pytest.fail(java_build.problem, pytrace=False)
    classpath = str(java_build.classpath)
    return ["java", f"-Djava.io.tmpdir={tmp_path}", "-cp", classpath, "ConnectorLifecycleExample"]


class TestWithAuth:
    @POSTGRESQL_ONLY
    @pytest.mark.parametrize("language", ["python", "java"])
    def test_a_token_walks_the_lifecycle_as_its_subject(
        self, language, java_build, auth_api: AuthApi, stack, prefect, api, tmp_path: Path
    ):
        actor = unique("example")
        env = _program_env(
            stack, tmp_path, BASE_URL=auth_api.url, AUTH_TOKEN=auth_api.token(sub=actor)
        )
        transcript = _run(_command(language, java_build, tmp_path), env)
        _assert_passed(transcript)
        _assert_whole_lifecycle(transcript, prefect, api)
        for run in control_runs(prefect, transcript.connector_id):
            assert f"actor:{actor}" in run.tags, (run.name, run.tags)

    @pytest.mark.parametrize("language", ["python", "java"])
    def test_without_a_token_it_stops_with_exit_1_and_says_why(
        self, language, java_build, auth_api: AuthApi, stack, tmp_path: Path
    ):
        env = _program_env(stack, tmp_path, BASE_URL=auth_api.url)
        done = subprocess.run(
            _command(language, java_build, tmp_path),
            env=env,
            capture_output=True,
            text=True,
            timeout=PROGRAM_TIMEOUT,
        )
        assert done.returncode == 1, f"{done.stdout}\n{done.stderr}"
        assert "401" in done.stdout + done.stderr
        assert "AUTH_TOKEN" in done.stdout + done.stderr
