"""The execution core's own duties: QCEngine's machine values without its probe, and the I/O thread's inbox."""

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from qcmb_fractal.execute import pool
from qcmb_fractal.execute.pool import Inbox, machine_globals


def test_machine_values_are_qcengines_without_the_cpu_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    from qcengine.config import get_global

    ours, theirs = machine_globals(), get_global()
    assert set(ours) == set(theirs)
    same = ("hostname", "username", "ncores", "nnodes", "cpu_brand")
    assert {k: ours[k] for k in same} == {k: theirs[k] for k in same}
    assert ours["memory"] == pytest.approx(theirs["memory"], rel=0.2)
    monkeypatch.setattr(pool, "_cpu_brand", lambda: None)  # no /proc/cpuinfo name: QCEngine's own probe
    assert machine_globals() == get_global()


def test_inbox_hands_over_in_order_and_never_misses_a_wake_up() -> None:
    inbox: Inbox[int] = Inbox()
    assert inbox.take() == []
    inbox.put([1, 2])
    inbox.put(iter([3]))
    assert inbox.take() == [1, 2, 3] and inbox.take() == []
    start = time.monotonic()
    inbox.wait(0.05)  # nothing put since the last take: waits the whole timeout
    assert time.monotonic() - start >= 0.04
    threading.Timer(0.01, inbox.put, args=([4],)).start()
    inbox.wait(10)
    assert inbox.take() == [4]
    inbox.stop()
    assert inbox.stopped.is_set()
    start = time.monotonic()
    inbox.wait(10)  # stop wakes the thread at once
    assert time.monotonic() - start < 5


def test_the_fork_server_ignores_ctrl_c_from_birth_and_the_driver_keeps_it() -> None:
    """The server shares the terminal's process group: Ctrl-C while it imports must not print its traceback."""
    probe = textwrap.dedent(
        """
        import signal
        from multiprocessing import forkserver
        from qcmb_fractal.execute.pool import forkserver_context
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even under nohup
        forkserver_context(1)
        pid = forkserver._forkserver._forkserver_pid
        status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
        ignored = int(status["SigIgn"], 16) >> (signal.SIGINT - 1) & 1
        mine = signal.getsignal(signal.SIGINT) is signal.default_int_handler
        blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        print(ignored, mine, blocked)
        """
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == ["1", "True", "False"], run.stderr
