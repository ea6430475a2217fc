"""The service at scale: children handed out in bounded batches per iteration, and big records deleted whole.

On the package's real server with a per-iteration limit lowered to a handful of children, so that small records
show what a 5,000-child record does with the default of 1,000.
"""

import time
from types import SimpleNamespace

import pytest
from qcportal.record_models import RecordStatusEnum

from qcmb_fractal.execute import Runner
from qcmb_fractal.execute.backends.local import LocalBackend
from qcmb_fractal.plan import Plan
from qcmb_fractal.plugin.client import add_qcmb_manybodys, get_qcmb_manybodys, simple_specification
from qcmb_fractal.plugin.server.config import QCMBServerConfig, plugin_config
from qcmb_fractal.plugin.server.record_socket import QCMBManyBodyRecordSocket, validated_input
from qcmb_fractal.testing.fractal import portal_molecule, wait_for_record
from qcmb_fractal.testing.molecules import water_cluster
from qcmb_fractal.testing.programs import needs_xtb

ENERGY_TOL = 1.0e-9


@pytest.fixture
def per_iteration(fractal, monkeypatch):
    """Set the server's qcmb_fractal.max_children_per_iteration for one test (the job runner reads it live)."""

    def set_limit(limit: int) -> None:
        monkeypatch.setattr(plugin_config(fractal[0]._qcf_config), "max_children_per_iteration", limit)

    return set_limit


def waits_for(limit: int, pending: list, submitted: list, handed_out: int) -> list:
    """The socket's dependency choice under a server configuration with this per-iteration limit."""
    socket = QCMBManyBodyRecordSocket.__new__(QCMBManyBodyRecordSocket)
    config = QCMBServerConfig(max_children_per_iteration=limit)
    socket.root_socket = SimpleNamespace(qcf_config=SimpleNamespace(qcmb_fractal=config))
    return socket._waits_for(pending, submitted, handed_out)


def test_service_waits_for_older_batches_or_half_a_cut_batch_so_managers_keep_work():
    new = [(10, "a"), (11, "b"), (12, "c"), (13, "d")]
    assert waits_for(4, [(1, "x")], new, 4) == [(1, "x")]  # the new batch stays queued meanwhile
    assert waits_for(4, [], new, 4) == new[:2]  # cut by the limit: step again once its first half is done
    assert waits_for(5, [], new, 4) == new  # everything reachable was handed out: wait for all of it
    assert waits_for(1, [], new[:1], 1) == new[:1]


@needs_xtb
def test_batches_of_the_per_iteration_limit_give_the_local_result_and_do_not_starve_a_small_record(
    client, per_iteration
):
    per_iteration(2)
    spec = simple_specification(program="xtb", method="gfn2-xtb", max_nbody=2, mode="eager")
    big = portal_molecule(water_cluster(3, shift=9.5))  # 6 children: batches of 2, 2, 2
    small = portal_molecule(water_cluster(2, shift=10.0))  # 3 children: batches of 2, 1
    _, (big_id,) = add_qcmb_manybodys(client, big, spec)
    _, (small_id,) = add_qcmb_manybodys(client, small, spec)

    record = wait_for_record(client, big_id)
    assert record.status == RecordStatusEnum.complete, record.error
    small_record = wait_for_record(client, small_id)
    assert small_record.status == RecordStatusEnum.complete, small_record.error
    assert small_record.modified_on < record.modified_on  # its children did not queue behind all of big's

    assert record.stdout.count("submitted 2 fragment calculation(s)") == 3
    assert "(at most 2 new children per service iteration: the rest follow in later ones)" in record.stdout
    assert len(set(get_qcmb_manybodys(client, big_id).cluster_singlepoints.values())) == 6

    with LocalBackend(1) as backend:
        local = Runner(Plan(validated_input(big, spec)), backend).run()
    compared = 0
    for key, value in local.properties.model_dump(exclude_none=True).items():
        if key.endswith("energy") or "_energy_" in key:
            assert abs(record.properties[key] - value) < ENERGY_TOL, key
            compared += 1
    assert compared > 3
    client.delete_records([big_id, small_id], soft_delete=False, delete_children=True)  # other tests query records


def test_record_with_uncomputed_children_is_cancelled_and_deleted_whole(client, per_iteration):
    per_iteration(4)
    # psi4 is not installed here: no manager takes the children, so they wait
    spec = simple_specification(program="psi4", method="hf", basis="sto-3g", max_nbody=2, mode="eager")
    mol = portal_molecule(water_cluster(5, shift=10.5))  # 15 children; only the first batch is ever created
    _, (rid,) = add_qcmb_manybodys(client, mol, spec)
    deadline = time.monotonic() + 60
    while sum(client.get_records(rid).children_status.values()) < 4:
        assert time.monotonic() < deadline, "the service never created its first batch"
        time.sleep(0.2)
    time.sleep(2)  # two service ticks: none of the batch finished, so no further batch comes
    assert client.get_records(rid).children_status == {RecordStatusEnum.waiting: 4}
    children = [sp for sp in get_qcmb_manybodys(client, rid).cluster_singlepoints.values() if sp is not None]
    assert len(children) == 4

    client.cancel_records([rid])
    assert client.get_records(rid).children_status == {RecordStatusEnum.cancelled: 4}
    meta = client.delete_records([rid], soft_delete=False, delete_children=True)
    assert (meta.n_deleted, meta.n_children_deleted) == (1, 4)
    assert client.get_records([rid, *children], missing_ok=True) == [None] * 5
