"""Signals ask a run to stop; the run loop raises at its own safe point, a second signal at once."""

import os
import signal

import pytest

from qcmb_fractal.execute.interrupts import STOP_POLL, deferred_interrupts, raise_if_asked, wait_timeout


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_first_signal_asks_the_second_raises(signum: signal.Signals) -> None:
    # Python's own Ctrl-C handler, as in a terminal, even where the tests run with SIGINT ignored (nohup)
    outside = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _first_asks_second_raises(signum)
    finally:
        signal.signal(signal.SIGINT, outside)


def _first_asks_second_raises(signum: signal.Signals) -> None:
    before = signal.getsignal(signum)
    with deferred_interrupts():
        raise_if_asked()  # nothing asked yet
        os.kill(os.getpid(), signum)
        with pytest.raises(KeyboardInterrupt, match=signum.name):
            raise_if_asked()
        with pytest.raises(KeyboardInterrupt, match=signum.name):
            os.kill(os.getpid(), signum)
            signal.sigtimedwait([], 0)  # a bytecode boundary: Python runs the handler here
    assert signal.getsignal(signum) is before
    raise_if_asked()  # the request ends with the block


def test_waits_are_bounded_only_while_a_stop_can_be_asked() -> None:
    assert wait_timeout(None) is None and wait_timeout(30.0) == 30.0
    with deferred_interrupts():
        assert wait_timeout(None) == STOP_POLL
        assert wait_timeout(30.0) == STOP_POLL
        assert wait_timeout(0.01) == 0.01
    assert wait_timeout(None) is None


def test_an_ignored_ctrl_c_stays_ignored() -> None:
    """``nohup`` and background jobs start with SIGINT ignored: the run must not start hearing it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with deferred_interrupts():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            raise_if_asked()
    finally:
        signal.signal(signal.SIGINT, previous)
