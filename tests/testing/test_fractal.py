import time

from qcportal.molecules import Molecule
from qcportal.record_models import RecordStatusEnum

from qcmb_fractal.testing.fractal import fractal_snowflake


def test_plain_snowflake_runs_an_xtb_singlepoint_on_machine_postgres():
    mol = Molecule(symbols=["He", "He"], geometry=[0, 0, 0, 0, 0, 5])
    with fractal_snowflake("qcmb_plugin_fixture", plugin=False) as (_, client):
        _, ids = client.add_singlepoints([mol], "xtb", "energy", "gfn2-xtb", None)
        deadline = time.monotonic() + 120
        while client.get_singlepoints(ids[0]).status not in (RecordStatusEnum.complete, RecordStatusEnum.error):
            assert time.monotonic() < deadline, "the compute manager never finished the singlepoint"
            time.sleep(0.2)
        record = client.get_singlepoints(ids[0])
    assert record.status == RecordStatusEnum.complete
    assert abs(record.properties["return_energy"] - (-3.4862411825)) < 1e-8
