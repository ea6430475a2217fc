"""QCFractal's compute manager vs qcmb-fractal-compute on one server, with the local backend as third column.

One ``qcmb-fractal-server start`` (machine PostgreSQL, service loop at 1 s) serves an xtb water-cluster
MBE(3) qcmb_manybody record (eager mode) to each manager in turn: 2 workers each, the same update_frequency,
each manager started (its log says so) before its record is submitted (start-up is not timed). The local
backend (2 workers, in this process) runs the same input. Per-child overhead is (time-to-solution - local
backend's) / children. Prints ``uptime`` first: on a loaded machine every column slows down.

    PYTHONPATH=. python benchmarks/bench_manager.py [--big] [--update-frequency 1]

Default: (H2O)6 MBE(3), 41 children. ``--big`` adds (H2O)20 MBE(3), 1350 children (QCFractal's manager
takes many minutes on it).
"""

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qcportal.record_models import RecordStatusEnum

from qcmb_fractal.execute import Runner
from qcmb_fractal.execute.backends.local import LocalBackend
from qcmb_fractal.plan import Plan
from qcmb_fractal.plugin.client import add_qcmb_manybodys, simple_specification
from qcmb_fractal.plugin.server.record_socket import validated_input
from qcmb_fractal.testing.fractal import drop_database, fresh_database, portal_molecule
from qcmb_fractal.testing.molecules import water_cluster
from qcmb_fractal.testing.servers import QCFRACTAL_MANAGER, QCMB_MANAGER, Manager, Server, wait_until

DB_NAME = "qcmb_bench_manager"
KEY = "nocp_corrected_total_energy_through_3_body"
MANAGERS = {"qcfractal-compute-manager": QCFRACTAL_MANAGER, "qcmb-fractal-compute": QCMB_MANAGER}


def spec(mode: str = "eager"):
    return simple_specification(program="xtb", method="gfn2-xtb", max_nbody=3, mode=mode)


def wait(client, record_id: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        record = client.get_records(record_id)
        if record.status == RecordStatusEnum.complete:
            return time.monotonic()
        if record.status == RecordStatusEnum.error or time.monotonic() > deadline:
            raise RuntimeError(f"record {record_id} is {record.status.value}: {record.error}")
        time.sleep(0.1)


def run_manager(server: Server, root: Path, name: str, command, waters: int, freq: float, mode: str):
    manager = Manager(root, server, name.replace("-", "_"), command=command, max_workers=2, update_frequency=freq)
    manager.start()
    try:
        ready = "Compute Manager successfully started."  # both managers log it once they can take tasks
        wait_until(lambda: ready in manager.log(), 300, f"{name} to start", manager.log)
        client = server.admin()
        mol = portal_molecule(water_cluster(waters))  # find_existing=False: new children every time
        start = time.monotonic()
        _, (rid,) = add_qcmb_manybodys(client, mol, spec(mode), find_existing=False)
        elapsed = wait(client, rid, timeout=7200) - start
        record = client.get_records(rid)
        return elapsed, record.properties[KEY], len(record.clusters)
    finally:
        manager.stop()


def run_local(waters: int) -> tuple[float, float, int]:
    inp = validated_input(portal_molecule(water_cluster(waters)), spec())
    plan = Plan(inp)
    start = time.perf_counter()
    with LocalBackend(2) as backend:
        result = Runner(plan, backend, progress=False).run()
    return time.perf_counter() - start, getattr(result.properties, KEY), len(plan.tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", action="store_true", help="also (H2O)20 MBE(3), 1350 children")
    parser.add_argument("--update-frequency", type=float, default=1.0, help="both managers' (default 1 s)")
    parser.add_argument("--service-frequency", type=int, default=1, help="the server's (default 1 s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    sizes = [6, 20] if args.big else [6]
    fresh_database(DB_NAME, plugin=True)
    root = Path(tempfile.mkdtemp(prefix="qcmb-bench-manager-"))
    server = Server(
        root / "server",
        DB_NAME,
        command=(sys.executable, "-m", "qcmb_fractal.plugin.server"),
        service_frequency=args.service_frequency,
    )
    server.write_config()
    server.add_users()
    rows, levels = [], {}
    try:
        server.start()
        for waters in sizes:
            t_local, e_local, n = run_local(waters)
            times = {}
            for name, command in MANAGERS.items():
                t, e, children = run_manager(
                    server, root / "managers", f"{name}-{waters}", command, waters, args.update_frequency, "eager",
                )  # fmt: skip
                assert children == n and abs(e - e_local) < 1e-9, (name, e, e_local)
                times[name] = t
            rows.append((waters, n, times, t_local))
        t, e, _ = run_manager(server, root / "managers", "levels-6", QCMB_MANAGER, 6, args.update_frequency, "levels")
        levels[6] = t
    finally:
        if server.proc is not None:
            server.stop()
        drop_database(DB_NAME)

    print(
        f"\nxtb (H2O)n MBE(3) qcmb_manybody eager, 2 workers each, update_frequency {args.update_frequency} s, "
        f"service_frequency {args.service_frequency} s\n(time to solution; overhead per child vs the local backend)\n"
    )
    print(
        f"{'case':8s} {'children':>8s} {'qcfractal-mgr/s':>15s} {'qcmb-compute/s':>14s} {'local/s':>8s} "
        f"{'ovh/child qcf':>13s} {'ovh/child qcmb':>14s} {'qcf/qcmb':>9s} {'qcmb/local':>10s}"
    )
    for waters, n, times, t_local in rows:
        qcf, ours = times["qcfractal-compute-manager"], times["qcmb-fractal-compute"]
        print(
            f"{f'(H2O){waters}':8s} {n:8d} {qcf:15.1f} {ours:14.1f} {t_local:8.1f} {(qcf - t_local) / n:12.3f}s "
            f"{(ours - t_local) / n:13.3f}s {qcf / ours:8.1f}x {ours / t_local:9.2f}x"
        )
    eager = rows[0][2]["qcmb-fractal-compute"]
    print(
        f"\nlevels mode, (H2O)6 MBE(3), qcmb-fractal-compute: {levels[6]:.1f} s vs eager {eager:.1f} s; "
        f"{(levels[6] - eager) / 2:+.1f} s per level boundary (service_frequency {args.service_frequency} s)"
    )
    print("\nuptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
