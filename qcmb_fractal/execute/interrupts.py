"""Ctrl-C and SIGTERM stop a run between tasks, not wherever the main thread happens to be.

Raised by the signal, KeyboardInterrupt can land inside ``concurrent.futures.wait`` while it holds the
futures' locks; the pool's own threads then block on those locks for ever as the run shuts down (a CI run
hung that way). Inside :func:`deferred_interrupts` the first signal only asks for a stop: the run loops
look at it between tasks (:func:`wait_timeout` bounds their waits) and raise KeyboardInterrupt there, with
nothing held. A second signal raises at once, for a user who will not wait.
"""

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_POLL = 0.25  # seconds a run loop may wait before it looks for a stop request

_requested = threading.Event()
_deferring = threading.Event()
_signal_name = ""


def _ask_to_stop(signum: int, _frame: object) -> None:
    global _signal_name
    name = signal.Signals(signum).name
    if _requested.is_set():
        raise KeyboardInterrupt(name)
    _signal_name = name
    _requested.set()


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM ask the run to stop instead of raising; call from the main thread.

    A SIGINT that was ignored when the program started (``nohup``, a background job) stays ignored.
    """
    signals = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signals.append(signal.SIGINT)
    previous = {signum: signal.signal(signum, _ask_to_stop) for signum in signals}
    _deferring.set()
    try:
        yield
    finally:
        _deferring.clear()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _requested.clear()


def raise_if_asked() -> None:
    """The safe point of a run loop: KeyboardInterrupt if a signal asked to stop."""
    if _requested.is_set():
        raise KeyboardInterrupt(_signal_name)


def wait_timeout(due: float | None) -> float | None:
    """How long a run loop may block: ``due`` as it is, or at most :data:`STOP_POLL` while a stop can be asked."""
    if not _deferring.is_set():
        return due
    return STOP_POLL if due is None else min(due, STOP_POLL)
