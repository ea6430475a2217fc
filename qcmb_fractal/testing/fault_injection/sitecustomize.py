"""Registers the test-only ``faultxtb`` program in compute-manager task processes (see ``fault_harness``).

Every Python process started while the fault-injection fixture is active runs this; those that cannot
import qcmb_fractal's plugin (a different interpreter or install) simply go without the fault program.
"""

import os

if os.environ.get("QCMB_FAULT_DIR"):
    try:
        from qcmb_fractal.testing.fault_harness import register
    except ImportError:
        pass
    else:
        register()
