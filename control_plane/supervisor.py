"""Run the processes of a stack: start them, restart the ones that die, and stop them all.

What belongs to the stack is marked, not remembered. Every process a `Supervisor` starts gets
`CONTROL_PLANE_UP_STACK=<this stack's id>` in its environment, and so does everything those
start, since a child inherits its parent's environment: the flow runs of Prefect's process
workers (which lead sessions of their own when their pool names no command) and whatever those
start. Stopping the stack is stopping every process whose environment has the mark, looked up
in `/proc` at that moment, so nothing escapes by changing its process group or losing its
parent; Jenkins' ProcessTreeKiller finds what a build left behind the same way.

A SIGKILLed `control-plane up` runs no cleanup of its own; its watchdog does. The watchdog is a
small process started first, in a session of its own (a signal to `up`'s process group does not
reach it), whose stdin is a pipe that only `up` holds open: the write end is close-on-exec, so
no other child inherits it. However `up` ends, the kernel closes the pipe, the watchdog reads
end-of-file and stops every process with the mark, with the same grace period. After a clean
stop it finds none and exits. PR_SET_PDEATHSIG would reach only `up`'s direct children, not
the flow runs the workers start, and setting it in a `preexec_fn` is unsafe in a process with
threads, which `up` is once Prefect is imported.

Only the standard library here, and `control_plane.processes`, which starts, waits for and
stops a process: the watchdog runs this module, and should start in no time.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from control_plane.processes import Process, StartFailed, exit_status

STACK_MARK = "CONTROL_PLANE_UP_STACK"
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_FIRST_BACKOFF_SECONDS = 1.0
_MAX_BACKOFF_SECONDS = 30.0
# A process that stayed up this long before it died is restarted after the first backoff again.
_STABLE_SECONDS = 60.0
_TICK_SECONDS = 0.5
_STOP_POLL_SECONDS = 0.2


class Stopping(BaseException):
    """A signal asked the stack to stop; raised at the first one only.

    A BaseException, as KeyboardInterrupt is, so no `except Exception` on the way swallows it.
    """


def _log(message: str) -> None:
    """A line on stderr, unless stderr is gone (a closed terminal): stopping matters more.

    Written to the descriptor, unbuffered: a signal handler logs too, and `print` interrupted
    by one that prints raises `RuntimeError: reentrant call`.
    """
    line = f"{datetime.now():%H:%M:%S} control-plane up: {message}\n"
    try:
        os.write(sys.stderr.fileno(), line.encode())
    except (OSError, ValueError):
        pass


@dataclass(frozen=True)
class _Process:
    pid: int
    pgid: int
    command: str


def _processes_of(stack: str) -> dict[int, _Process]:
    """The live processes whose environment carries the stack's mark, by pid.

    A zombie has no environment any more, so it counts as gone.
    """
    mark = f"{STACK_MARK}={stack}".encode()
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if mark not in Path(entry.path, "environ").read_bytes().split(b"\0"):
                continue
            stat = Path(entry.path, "stat").read_bytes()
            command = Path(entry.path, "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or another user's
            continue
        # The name in parentheses may hold spaces and parentheses; the fields after it do not.
        pgid = int(stat[stat.rindex(b")") + 2 :].split()[2])
        pid = int(entry.name)
        found[pid] = _Process(pid, pgid, command.replace(b"\0", b" ").decode(errors="replace"))
    return found


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _terminate(stack: str, *, grace: float, spare: Collection[int] = ()) -> list[_Process]:
    """SIGTERM every process of the stack outside the process groups `spare`, SIGKILL the ones
    still running `grace` seconds later, and return those.

    Looks again until they are gone, so a process started meanwhile (a flow run a worker was
    just starting) gets the same treatment.
    """
    deadline = time.monotonic() + grace
    signalled: set[int] = set()
    while True:
        running = {pid: p for pid, p in _processes_of(stack).items() if p.pgid not in spare}
        if not running:
            return []
        for pid in running.keys() - signalled:
            _send(pid, signal.SIGTERM)
        signalled |= running.keys()
        if time.monotonic() >= deadline:
            break
        time.sleep(_STOP_POLL_SECONDS)
    for pid in running:
        _send(pid, signal.SIGKILL)
    return list(running.values())


@dataclass(kw_only=True)
class Child(Process):
    """A process of the stack, kept running (restarted when it dies) unless `once`."""

    tier: int  # stopped only once every process of a higher tier is gone
    ready: Callable[[], bool] | None = None
    on_ready_again: Callable[[], None] | None = None  # when it answers after a restart
    once: bool = False
    started_at: float = 0.0
    deaths_in_a_row: int = 0
    restart_at: float | None = None
    awaiting_ready: bool = False


def start_watchdog(stack: str, grace: float) -> subprocess.Popen[bytes]:
    """The watchdog of the processes marked `stack`: it stops them all, with `grace` seconds
    each, once its stdin is closed, which the kernel does when the caller ends, however.

    Start it before the caller's own environment carries the mark, or it stops itself. Close
    its stdin and wait for it to stop cleanly: it then finds nothing left, or stops what was.
    """
    return subprocess.Popen(
        [sys.executable, "-m", __name__, stack, str(grace), str(os.getpid())],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )


class Supervisor:
    """Starts the stack's processes, restarts the ones that die with exponential backoff, and
    stops all of them, in tiers, on SIGINT, SIGTERM or SIGHUP, however often they come.

    Writes the pids it started to `state_file` as JSON whenever they change, and removes it
    once everything has stopped.
    """

    def __init__(self, *, grace: float, state_file: Path) -> None:
        self.grace = grace
        self.state_file = state_file
        self.stack = uuid.uuid4().hex
        self.children: list[Child] = []
        self._stopping = False
        self._watchdog: subprocess.Popen[bytes] | None = None

    def run(self, start: Callable[[], None]) -> int:
        """Start the stack with `start`, keep it running until a signal, then stop it.

        Returns the exit status: 0 after a clean stop, 1 when the stack did not start or a
        process had to be killed.
        """
        # Also when a shell that started us in the background made us ignore SIGINT.
        for signum in _STOP_SIGNALS:
            signal.signal(signum, self._on_signal)
        failure: StartFailed | None = None
        try:
            self._watchdog = start_watchdog(self.stack, self.grace)
            start()
            while True:
                self._tick()
                time.sleep(_TICK_SECONDS)
        except Stopping as stop:
            _log(f"{stop} received: stopping (a process gets {self.grace:g} s, then is killed)")
        except StartFailed as error:
            failure = error
            _log(f"{error}: stopping what was started")
        finally:
            killed = self.stop()
        return 1 if failure or killed else 0

    def start(
        self,
        name: str,
        command: list[str],
        env: dict[str, str],
        *,
        tier: int,
        ready: Callable[[], bool] | None = None,
        on_ready_again: Callable[[], None] | None = None,
        once: bool = False,
        user: str | None = None,
    ) -> Child:
        """Start a process of the stack; `ready` tells when it answers."""
        child = Child(
            name,
            command,
            {**env, STACK_MARK: self.stack},
            user=user,
            tier=tier,
            ready=ready,
            on_ready_again=on_ready_again,
            once=once,
        )
        self.children.append(child)
        self._launch(child)
        return child

    def wait_ready(self, child: Child, *, timeout: float) -> None:
        """Wait until `child` answers; StartFailed when it exits or times out first."""
        assert child.ready is not None
        child.wait_until(child.ready, timeout=timeout)

    def running(self, name: str) -> bool:
        """Whether a process of that name runs now."""
        return any(c.name == name and c.popen and c.popen.poll() is None for c in self.children)

    def restart_waiting(self) -> None:
        """Restart now the processes waiting out their backoff (their dependency is back)."""
        for child in self.children:
            if child.restart_at is not None:
                child.restart_at = time.monotonic()

    def stop(self) -> list[str]:
        """Stop every process of the stack, highest tier first; a line per process killed."""
        self._stopping = True
        names = {c.popen.pid: c.name for c in self.children if c.popen}
        killed = []
        for tier in sorted({c.tier for c in self.children}, reverse=True) or [0]:
            spare = [c.popen.pid for c in self.children if c.tier < tier and c.popen]
            killed += _terminate(self.stack, grace=self.grace, spare=spare)
        for child in self.children:
            if child.popen:
                child.popen.poll()  # reap it
        if self._watchdog is not None:
            self._watchdog.stdin.close()  # type: ignore[union-attr]
            self._watchdog.wait()
        self.state_file.unlink(missing_ok=True)
        lines = [
            f"killed {names.get(p.pid, p.command)} (pid {p.pid}): "
            f"still running {self.grace:g} s after SIGTERM"
            for p in killed
        ]
        for line in lines:
            _log(line)
        return lines

    def _on_signal(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self._stopping:
            _log(f"{name} received while stopping: what outlives its grace is killed")
            return
        self._stopping = True
        raise Stopping(name)

    def _launch(self, child: Child) -> None:
        child.restart_at = None
        child.started_at = time.monotonic()
        # Each leads a process group and session of its own (as a `Process` does): Ctrl-C in
        # the terminal, or a signal to `up`'s group, reaches `up` only, which stops the stack
        # in order. Its output goes to `up`'s.
        child.start()
        assert child.popen is not None
        _log(f"started {child.name} (pid {child.popen.pid})")
        self._write_state()

    def _tick(self) -> None:
        now = time.monotonic()
        for child in list(self.children):
            assert child.popen is not None
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self._launch(child)
                    child.awaiting_ready = child.on_ready_again is not None
                continue
            returncode = child.popen.poll()
            if returncode is None:
                if child.awaiting_ready and child.ready and child.ready():
                    child.awaiting_ready = False
                    _log(f"{child.name} answers again")
                    child.on_ready_again()  # type: ignore[misc]
                continue
            status = exit_status(returncode)
            if child.once:
                _log(f"{child.name} (pid {child.popen.pid}) exited with {status}")
                self.children.remove(child)
                self._write_state()
                continue
            if now - child.started_at >= _STABLE_SECONDS:
                child.deaths_in_a_row = 0
            delay = min(_MAX_BACKOFF_SECONDS, _FIRST_BACKOFF_SECONDS * 2**child.deaths_in_a_row)
            child.deaths_in_a_row += 1
            child.restart_at = now + delay
            pid = child.popen.pid
            _log(f"{child.name} (pid {pid}) exited with {status}; restarting it in {delay:g} s")

    def _write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "stack": self.stack,
            "watchdog": self._watchdog.pid if self._watchdog else None,
            "processes": {c.name: c.popen.pid for c in self.children if c.popen},
        }
        partial = self.state_file.with_suffix(".partial")
        partial.write_text(json.dumps(state, indent=2))
        partial.replace(self.state_file)


def _watch(stack: str, grace: float, starter: int) -> None:
    """The watchdog: wait until its starter is gone, however it ended, then stop what it left.

    The starter's pid comes as an argument: one killed while this process was starting has
    left it to init already.
    """
    sys.stdin.buffer.read()
    if left := _processes_of(stack):
        _log(f"watchdog: pid {starter} is gone; stopping what it left, {len(left)} process(es)")
        still = f"still running {grace:g} s after SIGTERM"
        for process in _terminate(stack, grace=grace):
            _log(f"watchdog: killed pid {process.pid} ({process.command}): {still}")


__all__ = ["STACK_MARK", "Child", "Stopping", "Supervisor", "start_watchdog"]

if __name__ == "__main__":
    _watch(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))
