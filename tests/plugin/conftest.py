"""One real QCFractal snowflake (machine PostgreSQL, qcmb-fractal-compute's manager) shared by the plugin tests.

The manager's task processes see the test-only ``faultxtb`` program (see qcmb_fractal/testing/fault_harness.py),
so fault-injection tests can break and fix a "node" without touching the record's specification. The
server allows MAX_CHILDREN children per record (its ``qcmb_fractal`` configuration section), well above
what any test here computes, so the limit itself can be tested on the same server.
"""

import os
from pathlib import Path

import pytest
import qcengine
from qcfractalcompute.apps.app_manager import discover_programs_conda

from qcmb_fractal.testing import fault_harness
from qcmb_fractal.testing.fault_harness import FAULT_PROGRAM
from qcmb_fractal.testing.fault_harness import register as register_fault_program
from qcmb_fractal.testing.fractal import fractal_snowflake

FAULT_SITE = Path(fault_harness.__file__).parent / "fault_injection"
MAX_CHILDREN = 50


@pytest.fixture(scope="package")
def fault_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="package")
def fractal(fault_dir):
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "QCMB_FAULT_DIR")}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [str(FAULT_SITE), saved["PYTHONPATH"]] if p)
    os.environ["QCMB_FAULT_DIR"] = str(fault_dir)
    register_fault_program()  # the server validates program names against QCEngine's known harnesses
    # The manager caches its program discovery per process; an earlier snowflake's list lacks faultxtb.
    discover_programs_conda.cache_clear()
    try:
        limit = {"qcmb_fractal": {"max_children_per_record": MAX_CHILDREN}}
        with fractal_snowflake("qcmb_plugin_tests", plugin=True, extra_config=limit, manager="qcmb") as snowflake:
            yield snowflake
    finally:
        qcengine.unregister_program(FAULT_PROGRAM)
        discover_programs_conda.cache_clear()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def client(fractal):
    return fractal[1]
