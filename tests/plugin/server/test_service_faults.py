"""A compute manager SIGKILLed in the middle of a qcmb_manybody service, on the real multi-process server.

The server-killed-mid-service case is in test_cli.py; the process helpers are the QCPortal backend's
fault tests' (real ``qcmb-fractal-server start`` process group); the managers are qcmb-fractal-compute, so this
is also its SIGKILL test (QCFractal's own manager is killed in tests/execute/backends/test_qcportal_faults.py).
"""

import sys

import pytest
from qcmanybody.v2.computer import ManyBodyComputer
from qcportal.record_models import RecordStatusEnum

from qcmb_fractal.plugin.client import add_qcmb_manybodys, qcmb_level_status, simple_specification
from qcmb_fractal.plugin.server.record_socket import validated_input
from qcmb_fractal.testing.fractal import drop_database, fresh_database, portal_molecule
from qcmb_fractal.testing.molecules import water_cluster
from qcmb_fractal.testing.programs import needs_xtb
from qcmb_fractal.testing.servers import (
    QCMB_MANAGER,
    Manager,
    Server,
    assert_no_temporary_files,
    wait_until,
)

pytestmark = [needs_xtb, pytest.mark.slow]
DB_NAME = "qcmb_srvfault_plugin_service"


def test_manager_killed_mid_service_hands_its_children_to_a_new_manager(tmp_path):
    fresh_database(DB_NAME, plugin=True)
    server = Server(tmp_path / "server", DB_NAME, command=(sys.executable, "-m", "qcmb_fractal.plugin.server"))
    server.write_config()
    server.add_users()
    managers: list[Manager] = []
    try:
        server.start()
        first = Manager(tmp_path / "managers", server, "qcmb-srvfault-plugin-first", command=QCMB_MANAGER)
        managers.append(first)
        first.start()
        client = server.admin()
        mol = portal_molecule(water_cluster(2, shift=11.0))
        spec = simple_specification(program="xtb", method="gfn2-xtb", max_nbody=2, mode="levels")
        _, (rid,) = add_qcmb_manybodys(client, mol, spec)

        def dimer_held() -> bool:
            levels = qcmb_level_status(client, rid)
            return len(levels) == 2 and levels[0].complete == 2 and levels[1].running == 1

        wait_until(dimer_held, 120, "the manager to hold the dimer", first.log)
        first.kill()
        wait_until(lambda: qcmb_level_status(client, rid)[1].running == 0, 60, "the dimer handed back", server.log)
        second = Manager(tmp_path / "managers", server, "qcmb-srvfault-plugin-second", command=QCMB_MANAGER)
        managers.append(second)
        second.start()
        wait_until(
            lambda: client.get_records(rid).status in (RecordStatusEnum.complete, RecordStatusEnum.error),
            240,
            "the service to finish",
            server.log,
        )
        record = client.get_records(rid)
        assert record.status == RecordStatusEnum.complete, record.error
        reference = ManyBodyComputer.from_manybodyinput(validated_input(mol, spec))
        for n in (1, 2):
            key = f"nocp_corrected_total_energy_through_{n}_body"
            assert abs(record.properties[key] - getattr(reference.properties, key)) < 1e-9
        children = list(client.query_singlepoints(include=["compute_history"]))
        assert len(children) == 3 and all(len(c.compute_history) == 1 for c in children)
        second.stop()
        assert_no_temporary_files(server, second)
    finally:
        for manager in managers:
            manager.stop()
        if server.proc is not None:
            server.kill()
        drop_database(DB_NAME)
