"""qcmb-fractal-compute against a real ``qcmb-fractal-server start`` on PostgreSQL: plugin records (levels mode,
not waiting for the service loop at level boundaries) and plain QCFractal singlepoints come back with the
reference numbers, a SIGTERM hands claimed tasks back, a crashing
program errors its record with the program's own message. (A SIGKILLed manager: tests/plugin/server/
test_service_faults.py runs this manager.)"""

import sys
import time

import pytest
from qcmanybody.v2.computer import ManyBodyComputer
from qcportal.record_models import RecordStatusEnum

from qcmb_fractal.plugin.client import add_qcmb_manybodys, simple_specification
from qcmb_fractal.plugin.server.record_socket import validated_input
from qcmb_fractal.testing.fractal import fresh_database, portal_molecule, wait_for_record
from qcmb_fractal.testing.local_faults import install_fault_nwchem, tagged_processes
from qcmb_fractal.testing.molecules import water_cluster
from qcmb_fractal.testing.programs import needs_nwchem, needs_xtb
from qcmb_fractal.testing.servers import (
    QCMB_MANAGER,
    Manager,
    Server,
    assert_no_temporary_files,
    running,
    wait_until,
)

pytestmark = [needs_xtb, pytest.mark.slow]
DB_NAME = "qcmb_compute_manager"
# The service loop runs this seriously seldom, so a levels-mode record that finishes within a few of its periods
# proves that its level boundaries do not wait for the loop (the plugin queues the next step when a level ends).
SERVICE_FREQUENCY = 15


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    fresh_database(DB_NAME, plugin=True)
    root = tmp_path_factory.mktemp("compute")
    srv = Server(
        root / "server",
        DB_NAME,
        command=(sys.executable, "-m", "qcmb_fractal.plugin.server"),
        service_frequency=SERVICE_FREQUENCY,
    )
    with running(srv):
        yield srv


@pytest.fixture
def start_manager(server, tmp_path):
    started: list[Manager] = []

    def start(name: str, max_workers: int) -> Manager:
        manager = Manager(tmp_path / "managers", server, name, command=QCMB_MANAGER, max_workers=max_workers)
        started.append(manager)
        manager.start()
        return manager

    yield start
    for manager in started:
        manager.stop()


def test_plugin_record_and_plain_singlepoint_match_the_reference(server, start_manager):
    manager = start_manager("qcmb-compute-numbers", 2)
    client = server.admin()
    trimer, dimer = portal_molecule(water_cluster(3, shift=31.0)), portal_molecule(water_cluster(2, shift=32.0))
    spec = simple_specification(program="xtb", method="gfn2-xtb", max_nbody=3, mode="levels")
    _, (rid,) = add_qcmb_manybodys(client, trimer, spec)
    _, (sp_id,) = client.add_singlepoints([dimer], "xtb", "energy", "gfn1-xtb", None)

    is_running = lambda: client.get_records(rid).status != RecordStatusEnum.waiting  # noqa: E731
    wait_until(is_running, 3 * SERVICE_FREQUENCY, "the service loop to start the record", server.log)
    started = time.monotonic()
    record = wait_for_record(client, rid)
    assert record.status == RecordStatusEnum.complete, record.error
    # Three levels and the final step: through the service loop alone that is 3 more of its periods at least.
    assert time.monotonic() - started < 2 * SERVICE_FREQUENCY, "level boundaries waited for the service loop"
    reference = ManyBodyComputer.from_manybodyinput(validated_input(trimer, spec)).properties
    for key in ("nocp_corrected_total_energy_through_3_body", "nocp_corrected_interaction_energy_through_3_body"):
        assert record.properties[key] == pytest.approx(getattr(reference, key), abs=1e-9)

    singlepoint = wait_for_record(client, sp_id)
    assert singlepoint.status == RecordStatusEnum.complete, singlepoint.error
    gfn1 = simple_specification(program="xtb", method="gfn1-xtb", max_nbody=2)  # MBE(2) of a dimer: its energy
    expected = ManyBodyComputer.from_manybodyinput(validated_input(dimer, gfn1)).properties
    assert singlepoint.properties["return_energy"] == pytest.approx(
        expected.nocp_corrected_total_energy_through_2_body, abs=1e-9
    )
    (history,) = singlepoint.compute_history
    assert history.manager_name.startswith("qcmb-compute-numbers-") and history.provenance.creator == "xtb"
    manager.stop()
    assert manager.proc.returncode == 0
    assert "Deactivated; 0 claimed tasks handed back" in manager.log()
    assert_no_temporary_files(server, manager)


@needs_nwchem
def test_sigterm_hands_back_claimed_tasks_and_a_new_manager_finishes_them(server, start_manager, tmp_path, monkeypatch):
    shim = install_fault_nwchem(tmp_path, monkeypatch, "sleep 300")  # the first calculation hangs
    client = server.admin()
    waters = [portal_molecule(water_cluster(1, shift=40.0 + i)) for i in range(3)]
    _, ids = client.add_singlepoints(waters, "nwchem", "energy", "hf", "sto-3g")
    first = start_manager("qcmb-compute-sigterm", 1)  # claims 1 + CLAIM_AHEAD = all three

    def claimed_and_hanging() -> bool:
        return shim.n_calls == 1 and all(r.status == RecordStatusEnum.running for r in client.get_records(ids))

    wait_until(claimed_and_hanging, 120, "the manager to claim all and hang on one", first.log)
    first.stop()  # SIGTERM
    assert first.proc.returncode == 0
    assert "Deactivated; 3 claimed tasks handed back" in first.log()
    assert first.registered().status == "inactive"
    assert {r.status for r in client.get_records(ids)} == {RecordStatusEnum.waiting}
    assert tagged_processes(shim.tag) == []  # the hanging program went with its worker

    second = start_manager("qcmb-compute-after-sigterm", 2)
    energies = [wait_for_record(client, i).properties["return_energy"] for i in ids]
    assert energies == pytest.approx([energies[0]] * 3, abs=1e-9) and shim.n_calls == 4
    assert all(len(r.compute_history) == 1 for r in client.get_records(ids, include=["compute_history"]))
    second.stop()


@needs_nwchem
def test_crashing_program_errors_its_record_with_the_programs_message(server, start_manager, tmp_path, monkeypatch):
    install_fault_nwchem(tmp_path, monkeypatch, 'echo "fault_nwchem: injected crash"; exit 3', condition="true")
    client = server.admin()
    water = portal_molecule(water_cluster(1, shift=50.0))
    _, (rid,) = client.add_singlepoints([water], "nwchem", "energy", "hf", "sto-3g")
    start_manager("qcmb-compute-crash", 1)
    record = wait_for_record(client, rid)
    assert record.status == RecordStatusEnum.error
    assert "fault_nwchem: injected crash" in record.error["error_message"]
