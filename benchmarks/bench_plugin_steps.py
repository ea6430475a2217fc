"""How fast one service step creates a record's children, what the cancel checks between chunks cost, and what
one service iteration costs on big records.

A qcmb_manybody record's first step (eager mode) creates all its singlepoint children in one transaction,
so the per-record limit (``qcmb_fractal.max_children_per_record``) bounds how long every other service
waits. The step reads the record's status before each chunk of ``CHILD_CHUNK`` children so that a cancel
stops it; the anchor is the same step as one single chunk (no check in between), measured in the same run
on the same server. One snowflake (machine PostgreSQL, no compute manager: the children only wait), service
loop at 1 s; each case is a fresh water cluster, MBE(2), so no step reuses another's children.

Iteration cost (``--iteration-waters``): an xtb MBE(3) record per cluster size ((H2O)20: 1,350 children, (H2O)32:
5,488) is stepped by hand through the record socket in this process (the server's own service loop is idle), so
nothing needs computing: every iteration hands out the next batch while none finishes, then all children are
marked complete with a made-up energy and one last iteration reads them all and finalizes. Then the record is
deleted with its children through the API. The anchor is the same record in one iteration (no per-iteration
limit, as before ``max_children_per_iteration``), in the same run; peak RSS is this process's (API, job runner
and the stepping, all in one).

Deletion (``--delete-waters``): a running record is cancelled, then deleted with its uncomputed children, while
other services wait on ``--crowd`` children (rows of ``service_dependency``, as on a server running a campaign),
with and without the plugin's index on ``service_dependency.record_id`` (the anchor: dropped for that case, as
QCFractal leaves it).

A huge record (``--huge 40 4``: (H2O)40 MBE(4), 102,090 children): started and stepped ``--huge-iterations`` times by
hand with the server's per-iteration limit; seconds of the start and of each step, peak RSS after each. Not run
by default (the start alone plans 102,090 calculations); then it is cancelled and deleted.

    PYTHONPATH=. python benchmarks/bench_plugin_steps.py [--waters 30 60] [--repeat 2] [--iteration-waters 20 32] \
        [--delete-waters 32] [--crowd 50000] [--huge 40 4 --huge-iterations 3]
"""

import argparse
import logging
import os
import resource
import time

import tabulate
from qcfractal.components.record_db_models import BaseRecordORM, RecordComputeHistoryORM
from qcfractal.components.services.db_models import ServiceDependencyORM, ServiceQueueORM
from qcfractal.db_socket import SQLAlchemySocket
from qcportal.record_models import RecordStatusEnum
from qcportal.utils import now_at_utc
from sqlalchemy import insert, select, text, update

from qcmb_fractal.plugin.client import add_qcmb_manybodys, simple_specification
from qcmb_fractal.plugin.server import record_socket
from qcmb_fractal.plugin.server.config import plugin_config
from qcmb_fractal.plugin.server.install import DEPENDENCY_INDEX, _create_dependency_index
from qcmb_fractal.plugin.server.record_db_models import QCMBClusterORM
from qcmb_fractal.testing.fractal import fractal_snowflake, portal_molecule
from qcmb_fractal.testing.molecules import water_cluster

TAG = "bench-nobody-computes-this"


def first_step_seconds(client, waters: int, shift: float) -> tuple[int, float]:
    """Children and seconds from the service's start to all children created (polled every 0.1 s)."""
    spec = simple_specification(program="xtb", method="gfn2-xtb", max_nbody=2, mode="eager")
    _, (rid,) = add_qcmb_manybodys(client, portal_molecule(water_cluster(waters, shift=shift)), spec, compute_tag=TAG)
    expected = waters + waters * (waters - 1) // 2
    while client.get_records(rid).status.value == "waiting":  # the service starts at the next tick
        time.sleep(0.02)
    start = time.monotonic()
    while sum(client.get_records(rid).children_status.values()) < expected:
        time.sleep(0.1)
    seconds = time.monotonic() - start
    client.delete_records([rid], soft_delete=False, delete_children=True)
    return expected, seconds


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def start_by_hand(socket: SQLAlchemySocket, rid: int) -> tuple[int, float]:
    """What QCFractal's service loop does to start a service; returns the service id and initialize's seconds."""
    with socket.session_scope() as session:
        service = session.execute(select(ServiceQueueORM).where(ServiceQueueORM.record_id == rid)).scalar_one()
        service.record.status = RecordStatusEnum.running
        service.record.compute_history.append(
            RecordComputeHistoryORM(status=RecordStatusEnum.running, modified_on=now_at_utc())
        )
        session.flush()
        start = time.perf_counter()
        socket.records.qcmb_manybody.initialize_service(session, service)
        session.commit()
        return service.id, time.perf_counter() - start


def iterate_by_hand(socket: SQLAlchemySocket, service_id: int) -> float:
    """One service iteration, committed, in seconds (the last one completes the record, as the service loop does)."""
    start = time.perf_counter()
    with socket.session_scope() as session:
        service = session.get(ServiceQueueORM, service_id)
        if socket.records.qcmb_manybody.iterate_service(session, service):
            socket.services.mark_service_complete(session, service)
    return time.perf_counter() - start


def created_children(socket: SQLAlchemySocket, rid: int) -> list[int]:
    with socket.session_scope() as session:
        stmt = select(QCMBClusterORM.singlepoint_id).where(
            QCMBClusterORM.manybody_id == rid, QCMBClusterORM.singlepoint_id.is_not(None)
        )
        return list(session.execute(stmt).scalars())


def iteration_case(client, socket: SQLAlchemySocket, waters: int, shift: float) -> dict[str, float]:
    """Step an MBE(3) record of ``waters`` waters to completion by hand; seconds per phase and the counts."""
    spec = simple_specification(program="xtb", method="gfn2-xtb", max_nbody=3, mode="eager")
    _, (rid,) = add_qcmb_manybodys(client, portal_molecule(water_cluster(waters, shift=shift)), spec, compute_tag=TAG)
    service_id, init_s = start_by_hand(socket, rid)
    steps: list[float] = []
    children: list[int] = []
    while True:
        steps.append(iterate_by_hand(socket, service_id))
        now = created_children(socket, rid)
        if len(now) == len(children):
            break
        children = now
    with socket.session_scope() as session:  # every child "finishes" at once
        done = {"status": RecordStatusEnum.complete, "properties": {"return_energy": -5.07}}
        session.execute(update(BaseRecordORM).where(BaseRecordORM.id.in_(children)).values(**done))
    final_s = iterate_by_hand(socket, service_id)
    status = client.get_records(rid).status
    if status != RecordStatusEnum.complete:
        raise RuntimeError(f"record {rid} ended {status.value}, not complete")
    start = time.monotonic()
    client.delete_records([rid], soft_delete=False, delete_children=True)
    delete_s = time.monotonic() - start
    return {
        "children": len(children),
        "iterations": len(steps) - 1,
        "init": init_s,
        "max": max(steps[:-1]),
        "total": sum(steps[:-1]),
        "final": final_s,
        "delete": delete_s,
    }


def iteration_rows(client, qcf_config, sizes: list[int]) -> list[tuple]:
    """Per record size: the record in one iteration (anchor), then with the server's per-iteration limit."""
    config = plugin_config(qcf_config)
    limit = config.max_children_per_iteration
    socket = SQLAlchemySocket(qcf_config)
    rows = []
    shift = 100.0
    for waters in sizes:
        anchor = None
        for case, per_iteration in (("one iteration (anchor)", 10**9), (f"at most {limit} per iteration", limit)):
            shift += 1.0
            config.max_children_per_iteration = per_iteration
            try:
                got = iteration_case(client, socket, waters, shift)
            finally:
                config.max_children_per_iteration = limit
            anchor = anchor or got
            rows.append(
                (
                    waters,
                    got["children"],
                    case,
                    got["iterations"],
                    f"{got['init']:.2f}",
                    f"{got['max']:.2f}",
                    f"{got['max'] / anchor['max']:.2f}",
                    f"{got['children'] / got['total']:.0f}",
                    f"{got['final']:.2f}",
                    f"{got['delete']:.2f}",
                    f"{peak_rss_mb():.0f}",
                )
            )
    return rows


def running_record(client, socket: SQLAlchemySocket, waters: int, shift: float) -> tuple[int, int]:
    """A started MBE(3) record whose iterations created all its children (none computed): its id and children."""
    spec = simple_specification(program="xtb", method="gfn2-xtb", max_nbody=3, mode="eager")
    _, (rid,) = add_qcmb_manybodys(client, portal_molecule(water_cluster(waters, shift=shift)), spec, compute_tag=TAG)
    service_id, _ = start_by_hand(socket, rid)
    children = -1
    while children != (children := len(created_children(socket, rid))):
        iterate_by_hand(socket, service_id)
    return rid, children


def crowd_dependencies(client, socket: SQLAlchemySocket, crowd: int) -> None:
    """``crowd`` rows in service_dependency, for a running record's service, as a campaign's services have."""
    rid, _ = running_record(client, socket, 3, 200.0)
    with socket.session_scope() as session:
        service = session.execute(select(ServiceQueueORM).where(ServiceQueueORM.record_id == rid)).scalar_one()
        child = created_children(socket, rid)[0]
        rows = [{"service_id": service.id, "record_id": child, "extras": {"task": f"crowd-{i}"}} for i in range(crowd)]
        session.execute(insert(ServiceDependencyORM), rows)


def deletion_rows(client, qcf_config, sizes: list[int], crowd: int) -> list[tuple]:
    """Per record size: seconds to cancel the running record, then to delete it with its children, without and with
    the index."""
    if not sizes:
        return []
    socket = SQLAlchemySocket(qcf_config)
    crowd_dependencies(client, socket, crowd)
    rows = []
    for waters in sizes:
        anchor = None
        for case, indexed in (("QCFractal's tables (anchor)", False), (f"with {DEPENDENCY_INDEX}", True)):
            with socket.session_scope() as session:
                session.execute(_create_dependency_index if indexed else text(f"DROP INDEX {DEPENDENCY_INDEX}"))
                session.execute(text("ANALYZE service_dependency"))
            rid, children = running_record(client, socket, waters, 300.0 + waters + indexed)
            start = time.monotonic()
            client.cancel_records([rid])
            cancelled = time.monotonic() - start
            client.delete_records([rid], soft_delete=False, delete_children=True)
            seconds = time.monotonic() - start - cancelled
            anchor = anchor or seconds
            timings = (f"{cancelled:.2f}", f"{seconds:.2f}", f"{seconds / anchor:.2f}")
            rows.append((waters, children, crowd, case, *timings))
    return rows


def huge_rows(client, qcf_config, waters: int, nbody: int, iterations: int) -> list[tuple]:
    """Start a huge record and step it a few times by hand; then cancel and delete it."""
    socket = SQLAlchemySocket(qcf_config)
    spec = simple_specification(program="xtb", method="gfn2-xtb", max_nbody=nbody, mode="eager")
    mol = portal_molecule(water_cluster(waters, shift=500.0))
    _, (rid,) = add_qcmb_manybodys(client, mol, spec, compute_tag=TAG)
    service_id, init_s = start_by_hand(socket, rid)
    rows = [("start (plan, cluster rows)", 0, f"{init_s:.2f}", f"{peak_rss_mb():.0f}")]
    for step in range(1, iterations + 1):
        seconds = iterate_by_hand(socket, service_id)
        rows.append((f"iteration {step}", len(created_children(socket, rid)), f"{seconds:.2f}", f"{peak_rss_mb():.0f}"))
    start = time.monotonic()
    client.cancel_records([rid])
    rows.append(("cancel", len(created_children(socket, rid)), f"{time.monotonic() - start:.2f}", ""))
    start = time.monotonic()
    client.delete_records([rid], soft_delete=False, delete_children=True)
    rows.append(("delete with children", 0, f"{time.monotonic() - start:.2f}", f"{peak_rss_mb():.0f}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--waters", type=int, nargs="*", default=[30, 60], help="cluster sizes (MBE(2) of each)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per case; the best is reported")
    parser.add_argument(
        "--iteration-waters", type=int, nargs="*", default=[20, 32], help="cluster sizes of the MBE(3) iteration cost"
    )
    parser.add_argument("--per-iteration", type=int, help="max_children_per_iteration (default: the server's)")
    parser.add_argument("--delete-waters", type=int, nargs="*", default=[32], help="cluster sizes of the deletions")
    parser.add_argument("--crowd", type=int, default=50_000, help="other services' dependencies during deletions")
    parser.add_argument("--huge", type=int, nargs=2, metavar=("WATERS", "NBODY"), help="a huge record's size")
    parser.add_argument("--huge-iterations", type=int, default=3, help="service iterations of the huge record")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"machine load (1, 5, 15 min) at start: {os.getloadavg()}")

    rows = []
    limit = {"max_children_per_record": 200_000}
    if args.per_iteration:
        limit["max_children_per_iteration"] = args.per_iteration
    # The service loop runs once at start (nothing to do), then not for an hour: the iteration cost steps by hand.
    idle = {"compute_workers": 0, "service_frequency": 3600, "extra_config": {"qcmb_fractal": limit}}
    with fractal_snowflake("qcmb_bench_steps", plugin=True, **idle) as (snowflake, client):
        iterations = iteration_rows(client, snowflake._qcf_config, args.iteration_waters)
        deletions = deletion_rows(client, snowflake._qcf_config, args.delete_waters, args.crowd)
        huge = huge_rows(client, snowflake._qcf_config, *args.huge, args.huge_iterations) if args.huge else []
    # The first step creates every child: nobody computes them, so a later iteration would never come.
    one_step = {"qcmb_fractal": {**limit, "max_children_per_iteration": 200_000}}
    with fractal_snowflake("qcmb_bench_steps", plugin=True, compute_workers=0, extra_config=one_step) as (_, client):
        shift = 0.0
        for waters in args.waters:
            best: dict[str, float] = {}
            for case, chunk in (("one chunk (anchor)", 10**9), (f"chunks of {record_socket.CHILD_CHUNK}", None)):
                for _ in range(args.repeat):
                    shift += 1.0
                    saved = record_socket.CHILD_CHUNK
                    record_socket.CHILD_CHUNK = chunk or saved
                    try:
                        children, seconds = first_step_seconds(client, waters, shift)
                    finally:
                        record_socket.CHILD_CHUNK = saved
                    best[case] = min(best.get(case, seconds), seconds)
            anchor = best["one chunk (anchor)"]
            for case, seconds in best.items():
                rows.append(
                    (waters, children, case, f"{seconds:.2f}", f"{children / seconds:.0f}", f"{seconds / anchor:.2f}")
                )
    print(tabulate.tabulate(rows, headers=["waters", "children", "step", "s", "children/s", "ratio to anchor"]))
    print("\nService iterations of an xtb MBE(3) record, stepped by hand (seconds; RSS: this process's peak so far)\n")
    headers = ["waters", "children", "case", "iterations", "init s", "max iteration s", "ratio to anchor"]
    headers += ["children/s", "final iteration s", "delete s", "peak RSS MB"]
    print(tabulate.tabulate(iterations, headers=headers))
    print("\nCancelling a running record, then deleting it with its uncomputed children (seconds)\n")
    headers = ["waters", "children", "other dependencies", "database", "cancel s", "delete s", "delete ratio to anchor"]
    print(tabulate.tabulate(deletions, headers=headers))
    if huge:
        print(f"\nA huge record, (H2O){args.huge[0]} MBE({args.huge[1]}), stepped by hand\n")
        print(tabulate.tabulate(huge, headers=["phase", "children created", "s", "peak RSS MB"]))
    print(f"\nmachine load (1, 5, 15 min): {os.getloadavg()}")


if __name__ == "__main__":
    main()
