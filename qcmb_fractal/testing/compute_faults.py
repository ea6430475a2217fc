"""Fault injection for qcmb-fractal-compute's worker pool: functions a warm worker runs to die or to hang.

They live here, not in a test module, because a spawned worker must import them by name.
"""

import os
import time


def fault_exit_worker(code: int) -> None:
    """Die as a segfaulting program would take its worker down: no exception, no cleanup."""
    os._exit(code)


def fault_hang(seconds: float) -> int:
    """Keep a worker busy, so tasks behind it stay unstarted."""
    time.sleep(seconds)
    return os.getpid()
