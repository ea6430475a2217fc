"""One real QCFractal snowflake (machine PostgreSQL, real compute manager) shared by the plugin tests.

The manager's task processes see the test-only ``faultxtb`` program (see server/fault_harness.py),
so fault-injection tests can break and fix a "node" without touching the record's specification.
"""

import os
import time
from pathlib import Path

import pytest
import qcengine
from qcfractalcompute.apps.app_manager import discover_programs_conda
from qcportal.molecules import Molecule
from qcportal.record_models import RecordStatusEnum

from qcmb_fractal.plan.inputs import parse_plain_molecule
from qcmb_fractal.plugin.server.fault_harness import FAULT_PROGRAM
from qcmb_fractal.plugin.server.fault_harness import register as register_fault_program
from qcmb_fractal.testing.fractal import fractal_snowflake
from qcmb_fractal.testing.molecules import WATER_TRIMER_BOHR

FAULT_SITE = Path(__file__).parent / "server" / "fault_injection"


def water_cluster(n: int = 3, shift: float = 0.0) -> Molecule:
    """The first ``n`` waters of the trimer, rigidly shifted so each test gets its own singlepoints."""
    mol = parse_plain_molecule(WATER_TRIMER_BOHR)
    natom = 3 * n
    return Molecule(
        symbols=mol["symbols"][:natom],
        geometry=[x + shift for x in mol["geometry"][: 3 * natom]],
        fragments=mol["fragments"][:n],
    )


def wait_for(client, record_id: int, timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    while True:
        record = client.get_records(record_id)
        if record.status in (RecordStatusEnum.complete, RecordStatusEnum.error):
            return record
        assert time.monotonic() < deadline, f"record {record_id} still {record.status.value} after {timeout} s"
        time.sleep(0.5)


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
        with fractal_snowflake("qcmb_plugin_tests", plugin=True) as (snowflake, client):
            yield snowflake, client
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
