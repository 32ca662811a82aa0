"""`control_plane.processes` on small real processes: a second or two, no Prefect."""

import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from control_plane.processes import (
    Process,
    StartFailed,
    free_port,
    listens_on,
    port_taken,
    running,
    wait_for,
)


def _python(code: str, log: Path) -> Process:
    return Process("child", [sys.executable, "-c", code], dict(os.environ), log)


class TestWaitFor:
    def test_returns_what_the_check_found(self):
        answers = iter([None, 0, "found"])
        assert wait_for(lambda: next(answers), timeout=5, what="x", interval=0) == "found"

    def test_times_out_naming_what_it_waited_for(self):
        with pytest.raises(TimeoutError, match="waiting for the moon"):
            wait_for(lambda: False, timeout=0.1, what="the moon", interval=0.01)


class TestProcess:
    def test_a_process_that_exits_first_fails_with_its_status_and_log(self, tmp_path: Path):
        process = _python("print('bad config'); raise SystemExit(3)", tmp_path / "log")
        with running(process):
            with pytest.raises(StartFailed, match=r"child exited with code 3 before it answered"):
                process.wait_until(lambda: False, timeout=30)
        assert "bad config" in (tmp_path / "log").read_text()

    def test_a_process_that_does_not_answer_in_time_fails(self, tmp_path: Path):
        with running(_python("import time; time.sleep(60)", tmp_path / "log")) as process:
            with pytest.raises(StartFailed, match="child did not answer within 0 s"):
                process.wait_until(lambda: False, timeout=0.2)

    def test_waits_until_it_listens(self, tmp_path: Path):
        port = free_port()
        code = f"import socket, time\ns = socket.create_server(('127.0.0.1', {port}))\n"
        code += "time.sleep(60)"
        with running(_python(code, tmp_path / "log")) as process:
            process.wait_until(lambda: listens_on(port), timeout=30)
            assert "is taken by pid" in (port_taken("127.0.0.1", port) or "")
        assert port_taken("127.0.0.1", port) is None

    def test_stop_kills_what_ignores_sigterm_after_the_grace(self, tmp_path: Path):
        ready = tmp_path / "ready"
        code = (
            "import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"
        )
        process = _python(code, tmp_path / "log").start()
        process.wait_until(ready.exists, timeout=30)
        started = time.monotonic()
        process.stop(grace=0.5)
        assert process.popen is not None and process.popen.returncode == -signal.SIGKILL
        assert time.monotonic() - started < 10

    def test_runs_in_a_session_of_its_own(self, tmp_path: Path):
        with running(_python("import time; time.sleep(60)", tmp_path / "log")) as process:
            assert process.popen is not None
            assert os.getsid(process.popen.pid) == process.popen.pid != os.getsid(0)


def test_a_free_port_is_free():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))
