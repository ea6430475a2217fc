"""The qcmb_manybody service on a real QCFractal server with a real compute manager running xtb/NWChem."""

import time

import numpy as np
import pytest
from qcmanybody.v2.computer import ManyBodyComputer
from qcportal.record_models import RecordStatusEnum
from qcportal.singlepoint import QCSpecification

from qcmb_fractal.errors import InputError
from qcmb_fractal.execute import Runner
from qcmb_fractal.execute.backends.local import LocalBackend
from qcmb_fractal.plan import Plan
from qcmb_fractal.plugin.client import (
    QCMBPortalClient,
    QCMBSpecification,
    add_qcmb_manybodys,
    get_qcmb_manybodys,
    qcmb_level_status,
    query_qcmb_manybodys,
    simple_specification,
)
from qcmb_fractal.plugin.server import record_socket
from qcmb_fractal.plugin.server.config import plugin_config
from qcmb_fractal.plugin.server.record_socket import QCMBManyBodyRecordSocket, validated_input
from qcmb_fractal.testing.fault_harness import FAULT_PROGRAM, write_fault_plan
from qcmb_fractal.testing.fractal import portal_molecule, wait_for_record, wait_for_record_output
from qcmb_fractal.testing.molecules import water_cluster
from qcmb_fractal.testing.programs import needs_nwchem, needs_xtb

pytestmark = needs_xtb

ENERGY_TOL = 1.0e-9
ARRAY_TOL = 1.0e-8


def serial_reference(molecule, spec: QCMBSpecification):
    """QCManyBody's own serial computer on the same input (xtb through QCEngine in this process)."""
    return ManyBodyComputer.from_manybodyinput(validated_input(molecule, spec))


def local_backend_reference(molecule, spec: QCMBSpecification):
    """qcmb-fractal's local process-pool backend on the same input.

    The reference for xtb gradients: QCEngine's xtb harness leaves ``return_gradient`` empty, which QCManyBody's
    serial computer cannot analyze, while the driver reads the derivative from ``return_result``.
    """
    with LocalBackend(1) as backend:
        return Runner(Plan(validated_input(molecule, spec)), backend).run()


def assert_same_properties(record, reference) -> None:
    ref = reference.properties.model_dump(exclude_none=True)
    got = record.properties
    compared = 0
    for key, value in ref.items():
        if key.endswith("energy") or "_energy_" in key:
            assert abs(got[key] - value) < ENERGY_TOL, key
            compared += 1
        elif "gradient" in key or "hessian" in key:
            expected = np.asarray(value)
            assert np.allclose(np.asarray(got[key]).reshape(expected.shape), expected, atol=ARRAY_TOL, rtol=0), key
            compared += 1
    assert compared > 3


def singlepoints_by_level(client, record):
    sp_ids = {c.singlepoint_id: c.level for c in record.clusters}
    by_level: dict[int, list] = {}
    for sp in client.get_singlepoints(list(sp_ids)):
        by_level.setdefault(sp_ids[sp.id], []).append(sp)
    return by_level


def test_eager_energy_equals_serial_and_builtin_service(client):
    mol = portal_molecule(water_cluster(3, shift=0.0))
    spec = simple_specification(program="xtb", method="gfn2-xtb", max_nbody=3, mode="eager")
    meta, (rid,) = add_qcmb_manybodys(client, mol, spec)
    assert meta.inserted_idx == [0]
    qcsp = QCSpecification(program="xtb", driver="energy", method="gfn2-xtb", basis=None)
    _, (builtin_id,) = client.add_manybodys([mol], "qcmanybody", {1: qcsp, 2: qcsp, 3: qcsp}, ["nocp"], {})

    record = wait_for_record(client, rid)
    builtin = wait_for_record(client, builtin_id)
    assert record.status == RecordStatusEnum.complete, record.error
    assert builtin.status == RecordStatusEnum.complete

    assert_same_properties(record, serial_reference(mol, spec))
    for n in (1, 2, 3):
        key = f"nocp_corrected_total_energy_through_{n}_body"
        assert abs(record.properties[key] - builtin.properties["energy_body_dict"][f"{n}nocp"]) < ENERGY_TOL
    assert abs(record.properties["nocp_corrected_interaction_energy"] - builtin.properties["ret_energy"]) < ENERGY_TOL

    # Eager: all seven children were handed out in the first iteration.
    assert "submitted 7 fragment calculation(s)" in record.stdout
    assert len(record.cluster_singlepoints) == 7
    full = get_qcmb_manybodys(client, rid, include=["result", "clusters"])
    assert full.result.return_result == pytest.approx(record.properties["return_result"], abs=ENERGY_TOL)
    assert "n-Body" in full.result.stdout or "N-Body" in full.result.stdout
    assert [(s.level, s.total, s.complete) for s in qcmb_level_status(client, rid)] == [(1, 3, 3), (2, 3, 3), (3, 1, 1)]
    assert [r.id for r in query_qcmb_manybodys(client, initial_molecule_id=record.initial_molecule_id)] == [rid]
    own_client = QCMBPortalClient(client.address)
    assert own_client.get_qcmb_manybodys(rid).properties == record.properties
    # other tests of this package's server leave complete eager records too: the filters are checked on this one
    assert [r.id for r in own_client.query_qcmb_manybodys(record_id=[rid], mode="eager", status="complete")] == [rid]
    assert list(own_client.query_qcmb_manybodys(record_id=[rid], mode="levels")) == []

    # Adding it again finds the existing record instead of computing anew.
    meta, ids = add_qcmb_manybodys(client, mol, spec)
    assert meta.existing_idx == [0] and ids == [rid]

    # The children views know this record type: children_status sees all seven, delete takes them along.
    assert client.get_records(rid).children_status == {RecordStatusEnum.complete: 7}
    client.delete_records([builtin_id], soft_delete=False, delete_children=False)
    client.delete_records([rid], soft_delete=False, delete_children=True)
    assert client.get_records([rid, *full.cluster_singlepoints.values()], missing_ok=True) == [None] * 8


def test_levels_mode_gradient_runs_level_after_level(client):
    mol = portal_molecule(water_cluster(3, shift=0.5))
    spec = simple_specification(program="xtb", method="gfn2-xtb", driver="gradient", max_nbody=2, mode="levels")
    _, (rid,) = add_qcmb_manybodys(client, mol, spec, find_existing=False)
    record = wait_for_record(client, rid)
    assert record.status == RecordStatusEnum.complete, record.error
    assert_same_properties(record, local_backend_reference(mol, spec))
    assert np.asarray(record.properties["return_gradient"]).size == 27

    full = get_qcmb_manybodys(client, rid, include=["clusters"])
    by_level = singlepoints_by_level(client, full)
    monomers_done = max(sp.modified_on for sp in by_level[1])
    assert min(sp.created_on for sp in by_level[2]) >= monomers_done
    assert record.stdout.count("submitted 3 fragment calculation(s)") == 2


def test_multilevel_with_supersystem_equals_serial(client):
    mol = portal_molecule(water_cluster(3, shift=1.0))
    xtb = {"program": "xtb", "driver": "energy", "keywords": {}}
    spec = QCMBSpecification(
        manybody={
            "driver": "energy",
            "keywords": {"bsse_type": ["nocp"], "levels": {1: "gfn1", "supersystem": "gfn2"}},
            "specification": {
                "gfn1": {**xtb, "model": {"method": "gfn1-xtb"}},
                "gfn2": {**xtb, "model": {"method": "gfn2-xtb"}},
            },
        }
    )
    _, (rid,) = add_qcmb_manybodys(client, mol, spec)
    record = wait_for_record(client, rid)
    assert record.status == RecordStatusEnum.complete, record.error
    assert sorted(c.mc_level for c in record.clusters) == ["gfn1"] * 3 + ["gfn2"] * 4
    assert_same_properties(record, serial_reference(mol, spec))


@needs_nwchem
@pytest.mark.nwchem
def test_counterpoise_with_nwchem_equals_serial(client):
    mol = portal_molecule(water_cluster(2, shift=1.5))
    spec = simple_specification(program="nwchem", method="hf", basis="sto-3g", bsse=("cp", "nocp"), max_nbody=2)
    _, (rid,) = add_qcmb_manybodys(client, mol, spec)
    record = wait_for_record(client, rid)
    assert record.status == RecordStatusEnum.complete, record.error
    assert_same_properties(record, serial_reference(mol, spec))
    assert "cp_corrected_interaction_energy" in record.properties


@needs_nwchem
@pytest.mark.nwchem
def test_hessian_with_nwchem_equals_serial(client):
    mol = portal_molecule(water_cluster(2, shift=5.0))
    spec = simple_specification(program="nwchem", method="hf", basis="sto-3g", driver="hessian", max_nbody=2)
    _, (rid,) = add_qcmb_manybodys(client, mol, spec)
    record = wait_for_record(client, rid)
    assert record.status == RecordStatusEnum.complete, record.error
    assert_same_properties(record, serial_reference(mol, spec))
    assert np.asarray(record.properties["return_hessian"]).size == 18 * 18


def test_counterpoise_with_ghost_blind_program_is_refused_at_submission(client):
    mol = portal_molecule(water_cluster(3, shift=2.0))
    spec = simple_specification(program="xtb", method="gfn2-xtb", bsse=("cp",), max_nbody=2)
    with pytest.raises(InputError, match="ignores them"):
        add_qcmb_manybodys(client, mol, spec)
    assert list(query_qcmb_manybodys(client, status=[RecordStatusEnum.waiting, RecordStatusEnum.running])) == []


def test_child_failing_once_is_retried(client, fault_dir):
    write_fault_plan(fault_dir, natoms=[6], failures=1)
    mol = portal_molecule(water_cluster(3, shift=2.5))
    spec = simple_specification(program=FAULT_PROGRAM, method="gfn2-xtb", max_nbody=2)
    _, (rid,) = add_qcmb_manybodys(client, mol, spec)
    record = wait_for_record(client, rid)
    assert record.status == RecordStatusEnum.complete, record.error
    assert "retrying 3 failed" in record.stdout

    by_level = singlepoints_by_level(client, get_qcmb_manybodys(client, rid, include=["clusters"]))
    assert [len(sp.compute_history) for sp in by_level[1]] == [1, 1, 1]
    assert [len(sp.compute_history) for sp in by_level[2]] == [2, 2, 2]
    xtb_spec = simple_specification(program="xtb", method="gfn2-xtb", max_nbody=2)
    assert_same_properties(record, serial_reference(mol, xtb_spec))


def test_child_always_failing_errors_record_and_reset_resumes(client, fault_dir):
    write_fault_plan(fault_dir, natoms=[6], failures=-1)
    mol = portal_molecule(water_cluster(3, shift=3.0))
    spec = simple_specification(program=FAULT_PROGRAM, method="gfn2-xtb", max_nbody=2, mode="levels", max_attempts=2)
    _, (rid,) = add_qcmb_manybodys(client, mol, spec)
    record = wait_for_record(client, rid)
    assert record.status == RecordStatusEnum.error
    message = record.error["error_message"]
    assert "3 fragment calculation(s) failed (up to 2 attempt(s) each" in message
    for label in ("[1, 2]", "[1, 3]", "[2, 3]"):
        assert label in message
    assert "fault injected" in message
    assert [(s.level, s.complete, s.error) for s in qcmb_level_status(client, rid)] == [(1, 3, 0), (2, 0, 3)]

    write_fault_plan(fault_dir)  # the node is fixed
    client.reset_records([rid])
    record = wait_for_record(client, rid)
    assert record.status == RecordStatusEnum.complete, record.error
    by_level = singlepoints_by_level(client, get_qcmb_manybodys(client, rid, include=["clusters"]))
    assert [len(sp.compute_history) for sp in by_level[1]] == [1, 1, 1]  # finished children were not recomputed
    assert all(sp.status == RecordStatusEnum.complete for sp in by_level[2])
    xtb_spec = simple_specification(program="xtb", method="gfn2-xtb", max_nbody=2)
    assert_same_properties(record, serial_reference(mol, xtb_spec))


def test_record_over_the_servers_limit_is_refused_with_count_and_limit(fractal):
    snowflake, client = fractal
    limit = plugin_config(snowflake._qcf_config).max_children_per_record
    assert limit < 92  # the conftest's server is configured below what an 8-water MBE(3) needs
    mol = portal_molecule(water_cluster(8, shift=6.0))
    spec = simple_specification(program="xtb", method="gfn2-xtb", max_nbody=3)
    with pytest.raises(InputError) as refused:
        add_qcmb_manybodys(client, mol, spec)
    message = str(refused.value)
    assert "needs 92 fragment calculations (singlepoint children; 8 fragments, max_nbody 3" in message
    assert f"more than the {limit:,} this server allows per record" in message
    assert "qcmb_fractal.max_children_per_record" in message
    assert list(query_qcmb_manybodys(client, status=[RecordStatusEnum.waiting, RecordStatusEnum.running])) == []


def test_cancel_during_a_service_step_undoes_it_and_no_child_is_ever_created(fractal, monkeypatch):
    """Fault injection: the cancel arrives between the step's first and second chunk of children."""
    snowflake, client = fractal
    tag = "qcmb-cancel-test"
    monkeypatch.setattr(record_socket, "CHILD_CHUNK", 4)  # 21 children: six chunks, six checks
    checks: list[int] = []
    check_running = QCMBManyBodyRecordSocket._check_running

    def cancel_before_second_chunk(session, rec, *, final=False):
        if rec.service is not None and rec.service.compute_tag == tag:
            checks.append(rec.id)
            if len(checks) == 2:
                snowflake.client().cancel_records([rec.id])
        check_running(session, rec, final=final)

    monkeypatch.setattr(QCMBManyBodyRecordSocket, "_check_running", staticmethod(cancel_before_second_chunk))
    mol = portal_molecule(water_cluster(6, shift=6.5))
    spec = simple_specification(program="xtb", method="gfn2-xtb", max_nbody=2, mode="eager")
    _, (rid,) = add_qcmb_manybodys(client, mol, spec, compute_tag=tag)

    record = wait_for_record_output(client, rid, "this step was undone")
    assert record.status == RecordStatusEnum.cancelled
    assert "the record was cancelled while its service step ran" in record.stdout
    time.sleep(2)  # two service ticks: a cancelled service is never stepped again
    assert checks == [rid, rid]
    assert client.get_records(rid).children_status == {}
    assert set(get_qcmb_manybodys(client, rid).cluster_singlepoints.values()) == {None}
    client.delete_records([rid], soft_delete=False)


def test_unknown_method_fails_each_child_at_once(client):
    mol = portal_molecule(water_cluster(2, shift=7.5))
    spec = simple_specification(program="xtb", method="gfn9-xtb", max_nbody=2, max_attempts=3)
    _, (rid,) = add_qcmb_manybodys(client, mol, spec)
    record = wait_for_record(client, rid)
    assert record.status == RecordStatusEnum.error
    message = record.error["error_message"]
    assert "3 fragment calculation(s) failed" in message
    assert "input_error: Invalid method gfn9-xtb" in message
    children = client.get_singlepoints(list(record.cluster_singlepoints.values()), include=["compute_history"])
    assert [len(c.compute_history) for c in children] == [1, 1, 1]  # no child was retried


def test_children_no_manager_takes_say_so_in_level_status_and_output(client):
    mol = portal_molecule(water_cluster(2, shift=8.0))
    spec = simple_specification(program="psi4", method="hf", basis="sto-3g", max_nbody=2)  # psi4: not installed
    _, (rid,) = add_qcmb_manybodys(client, mol, spec)
    record = wait_for_record_output(client, rid, "no active compute manager takes program psi4")
    assert "with compute tag '*' (No manager matches programs & tags:" in record.stdout
    levels = qcmb_level_status(client, rid)
    assert [(s.level, s.total, s.waiting) for s in levels] == [(1, 2, 2), (2, 1, 1)]
    for status in levels:
        assert status.waiting_reason.startswith("No manager matches programs & tags: ")
        assert "Manager missing programs: {'psi4'}" in status.waiting_reason
    client.delete_records([rid], soft_delete=False, delete_children=True)
