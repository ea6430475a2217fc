"""Imported by the fork server that local workers start from (its preload), and nowhere else.

It runs in the server, once, while the driver reads and plans its input: it imports what every worker
needs, so a worker forked from the server starts in milliseconds, and it ties the server's life to the
driver's: a SIGKILLed driver takes the server down, and the server's workers follow by their own
PR_SET_PDEATHSIG.
"""

import signal

import qcengine
import qcengine.programs.base

from qcmb_fractal.execute.backends.local import die_with_parent

die_with_parent(signal.SIGKILL)

__all__ = ["qcengine"]
