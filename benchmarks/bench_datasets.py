"""A qcmb_manybody campaign on one real server: a dataset of random water clusters, then (H2O)20 and (H2O)32 records.

One ``qcmb-fractal-server start`` (machine PostgreSQL, service loop at 1 s, QCFractal's default of 20 active
services, ``qcmb_fractal.max_children_per_record`` raised to 6,000) and one qcmb-fractal-compute with 2 workers.

1. a ``qcmb_manybody`` dataset of ``--entries`` random 3-8-water clusters (``--seed``), one xtb GFN2 MBE(3)
   specification, submitted at once; the anchor is the local backend (same workers, one pool, one input after
   another) on its first ``--anchor-entries`` entries, run before the server starts; energies compared to 1e-9 Eh;
2. unless ``--no-big``: an xtb (H2O)20 MBE(3) record (1,350 children), then (H2O)32 MBE(3) (5,488), each to
   completion; then each is deleted for good with its children (``delete_records(soft_delete=False)``).

Per phase: wall time from submission to completion, distinct children per second, service time per iteration,
server memory (the server's process tree, PostgreSQL not included, sampled every second: summed PSS, and the
largest process's RSS) and database bytes per child (``pg_database_size`` after minus before). Iteration times
come from QCFractal's ``internal_jobs`` table, which keeps every finished job with its start and end:
``iterate_service_N`` jobs are one service's iteration (locks, plan, new children, commit), ``iterate_services``
is the service loop, which also starts services (their planning and cluster rows). Record stdout holds no
timing of the step itself.

    PYTHONPATH=. python benchmarks/bench_datasets.py [--entries 100] [--seed 7] [--anchor-entries 10] [--workers 2] \
        [--no-big]
"""

import argparse
import contextlib
import logging
import math
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg2
import tabulate
from qcportal import PortalClient
from qcportal.record_models import RecordStatusEnum
from tqdm import tqdm

from qcmb_fractal.execute import Runner
from qcmb_fractal.execute.backends.local import LocalBackend
from qcmb_fractal.plan import make_plan
from qcmb_fractal.plugin.client import QCMBDatasetNewEntry, add_qcmb_manybodys, simple_specification
from qcmb_fractal.plugin.server.record_socket import validated_input
from qcmb_fractal.testing.fractal import (
    PG_HOST,
    PG_PASSWORD,
    PG_PORT,
    PG_ROLE,
    drop_database,
    fresh_database,
    portal_molecule,
)
from qcmb_fractal.testing.molecules import random_water_cluster, water_cluster
from qcmb_fractal.testing.servers import ADMIN, ADMIN_PASSWORD, QCMB_MANAGER, Manager, Server, wait_until

DB_NAME = "qcmb_bench_datasets"
SPEC = simple_specification(program="xtb", method="gfn2-xtb", max_nbody=3)
KEY = "nocp_corrected_total_energy"
RSS_LIMIT_MB, STEP_LIMIT_S, DELETE_LIMIT_S, ENERGY_TOL = 1024.0, 5.0, 60.0, 1e-9


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


class RssSampler(threading.Thread):
    """Peaks (MB) since the last ``reset`` of a process tree's summed PSS (shared pages counted once: its forked
    processes share most of theirs) and of its largest process's RSS."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.largest = pid, 0.0, 0.0

    def reset(self) -> tuple[float, float]:
        peaks, self.peak, self.largest = (self.peak, self.largest), 0.0, 0.0
        return peaks

    def run(self) -> None:
        while True:
            try:
                root = psutil.Process(self.pid)
                memory = [p.memory_full_info() for p in [root, *root.children(recursive=True)]]
                self.peak = max(self.peak, sum(m.pss for m in memory) / 2**20)
                self.largest = max(self.largest, *(m.rss / 2**20 for m in memory))
            except psutil.Error:  # a process ended between listing and reading: sample again
                pass
            time.sleep(1)


def clusters(entries: int, seed: int) -> dict[str, Any]:
    """Random 3-8-water clusters, reproducible from ``seed``; a seed whose cluster clashes is skipped."""
    rng, out, k = random.Random(seed), {}, 0
    while len(out) < entries:
        n, k = rng.randint(3, 8), k + 1
        try:
            out[f"w{n}-{len(out):03d}"] = random_water_cluster(n, seed=seed * 100_000 + k)
        except RuntimeError:
            continue
    return out


def run_anchor(mols: dict[str, Any], workers: int) -> tuple[float, int, dict[str, float]]:
    start, children, energies = time.perf_counter(), 0, {}
    with LocalBackend(workers) as backend:
        for name, mol in mols.items():
            plan = make_plan(validated_input(portal_molecule(mol), SPEC))
            energies[name] = getattr(Runner(plan, backend, progress=False).run().properties, KEY)
            children += len(plan.tasks)
    return time.perf_counter() - start, children, energies


class Phase:
    """Wall time, server-side iteration times, RSS peak and database growth of one phase of the benchmark."""

    def __init__(self, db: Any, rss: RssSampler) -> None:
        self.db, self.rss = db, rss
        rss.reset()
        self.job0, self.size0 = self.sql("SELECT coalesce(max(id), 0) FROM internal_jobs"), self.db_size()
        self.start = time.monotonic()

    def sql(self, query: str, *args: Any) -> Any:
        with self.db.cursor() as cur:
            cur.execute(query, args)
            return cur.fetchone()[0]

    def db_size(self) -> int:
        return self.sql("SELECT pg_database_size(current_database())")

    def finish(self, name: str, records: list[int]) -> dict[str, Any]:
        wall = time.monotonic() - self.start
        children = self.sql(
            "SELECT count(DISTINCT singlepoint_id) FROM qcmb_manybody_cluster WHERE manybody_id = ANY(%s)", records
        )
        with self.db.cursor() as cur:
            cur.execute(
                "SELECT name = 'iterate_services', extract(epoch FROM ended_date - started_date) FROM internal_jobs "
                "WHERE id > %s AND ended_date IS NOT NULL AND name ~ '^iterate_service(s|_[0-9]+)$'",
                (self.job0,),
            )
            jobs = cur.fetchall()
        steps = [float(s) for loop, s in jobs if not loop]
        return {
            "phase": name, "records": len(records), "children": children, "wall s": wall,
            "children/s": children / wall, "iterations": len(steps),
            "median iter s": statistics.median(steps or [0.0]), "max iter s": max(steps, default=0.0),
            "max loop s": max((float(s) for loop, s in jobs if loop), default=0.0),
            **dict(zip(("server PSS MB", "max proc RSS MB"), self.rss.reset(), strict=True)),
            "DB B/child": round((self.db_size() - self.size0) / max(children, 1)), "delete s": None,
        }  # fmt: skip


def wait_dataset(ds: Any, total: int) -> None:
    with tqdm(total=total, desc="dataset records", unit="rec") as bar:
        while bar.n < total:
            counts = {s: n for by_status in ds.status().values() for s, n in by_status.items()}
            if counts.get(RecordStatusEnum.error):
                raise RuntimeError(f"dataset records errored:\n{ds.status_table()}")
            bar.update(counts.get(RecordStatusEnum.complete, 0) - bar.n)
            time.sleep(1)


def wait_record(client: PortalClient, rid: int, total: int, desc: str) -> None:
    with tqdm(total=total, desc=desc, unit="child") as bar:
        while (record := client.get_records(rid)).status != RecordStatusEnum.complete:
            if record.status == RecordStatusEnum.error:
                raise RuntimeError(f"record {rid} errored: {record.error}")
            bar.update(record.children_status.get(RecordStatusEnum.complete, 0) - bar.n)
            time.sleep(1)
        bar.update(total - bar.n)


def benchmark(
    server: Server, args: argparse.Namespace, mols: dict[str, Any], anchor: dict[str, float]
) -> tuple[list[dict[str, Any]], float]:
    """The table's rows (dataset, then the big records) and the worst energy difference from the anchor."""
    client = PortalClient(server.uri, ADMIN, ADMIN_PASSWORD, show_motd=False)
    client.timeout = 900  # a slow deletion is a measurement, not an error
    assert server.proc is not None
    rss = RssSampler(server.proc.pid)
    rss.start()
    connect = dict(host=PG_HOST, port=PG_PORT, user=PG_ROLE, password=PG_PASSWORD, dbname=server.database)
    with contextlib.closing(psycopg2.connect(**connect)) as db:
        db.autocommit = True
        ds = client.add_dataset("qcmb_manybody", "random water clusters", description="3-8 waters, xtb MBE(3)")
        ds.add_entries([QCMBDatasetNewEntry(name=k, initial_molecule=portal_molecule(m)) for k, m in mols.items()])
        ds.add_specification("gfn2", SPEC)
        phase = Phase(db, rss)
        ds.submit()
        wait_dataset(ds, len(mols))
        records = [r.id for _, _, r in ds.iterate_records()]
        rows = [phase.finish(f"dataset of {len(mols)}", records)]
        df = ds.get_properties_df([KEY])
        worst = max((abs(df.loc[name, ("gfn2", KEY)] - e) for name, e in anchor.items()), default=0.0)
        big = {}
        for waters in [] if args.no_big else [20, 32]:
            phase = Phase(db, rss)
            _, (rid,) = add_qcmb_manybodys(client, portal_molecule(water_cluster(waters)), SPEC, find_existing=False)
            wait_record(client, rid, sum(math.comb(waters, k) for k in (1, 2, 3)), f"(H2O){waters}")
            rows.append(phase.finish(f"(H2O){waters} MBE(3)", [rid]))
            big[rid] = rows[-1]
        for rid, row in big.items():
            start = time.monotonic()
            meta = client.delete_records([rid], soft_delete=False, delete_children=True)
            row["delete s"] = time.monotonic() - start
            assert meta.n_children_deleted == row["children"], (meta, row["children"])
    return rows, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100, help="dataset entries (default 100)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the random clusters (default 7)")
    parser.add_argument("--anchor-entries", type=int, default=10, help="entries also run locally (default 10)")
    parser.add_argument("--workers", type=int, default=2, help="manager and local-backend workers (default 2)")
    parser.add_argument("--no-big", action="store_true", help="skip the (H2O)20 and (H2O)32 records")
    args = parser.parse_args()
    if min(args.entries, args.anchor_entries) < 1:
        parser.error("--entries and --anchor-entries must be at least 1")
    logging.basicConfig(level=logging.WARNING)
    print("uptime:", uptime())
    mols = clusters(args.entries, args.seed)
    t_anchor, n_anchor, anchor = run_anchor(dict(list(mols.items())[: args.anchor_entries]), args.workers)

    root = Path(tempfile.mkdtemp(prefix="qcmb-bench-datasets-"))
    env = {"QCF_QCMB_FRACTAL__MAX_CHILDREN_PER_RECORD": "6000"}
    command = (sys.executable, "-m", "qcmb_fractal.plugin.server")
    server = Server(root / "server", DB_NAME, command=command, env=env, heartbeat_max_missed=60)
    manager = Manager(root / "managers", server, "bench_datasets", command=QCMB_MANAGER, max_workers=args.workers)
    try:
        fresh_database(DB_NAME, plugin=True)
        server.write_config()
        server.add_users()
        server.start()
        manager.start()
        wait_until(lambda: "Compute Manager successfully started." in manager.log(), 300, "the manager", manager.log)
        rows, worst = benchmark(server, args, mols, anchor)
    finally:
        manager.stop()
        if server.proc is not None:
            server.stop()
        drop_database(DB_NAME)
        shutil.rmtree(root, ignore_errors=True)

    print(f"\nxtb GFN2 MBE(3) nocp, qcmb-fractal-compute with {args.workers} workers, service_frequency 1 s\n")
    print(tabulate.tabulate(rows, headers="keys", floatfmt=".2f", missingval="-"))
    local_rate = n_anchor / t_anchor
    ratio = rows[0]["children/s"] / local_rate
    print(f"\nanchor: local backend, {len(anchor)} entries, {n_anchor} children in {t_anchor:.1f} s")
    print(f"= {local_rate:.1f} children/s; the dataset's children/s is {ratio:.2f}x the local backend's")
    targets = {
        f"server memory (summed PSS) < {RSS_LIMIT_MB:.0f} MB": max(r["server PSS MB"] for r in rows) < RSS_LIMIT_MB,
        f"every service step (iteration or loop) < {STEP_LIMIT_S:.0f} s": all(
            max(r["max iter s"], r["max loop s"]) < STEP_LIMIT_S for r in rows
        ),
        f"dataset energies equal the local backend's to {ENERGY_TOL:g} Eh (worst {worst:.1e})": worst < ENERGY_TOL,
    }
    if not args.no_big:
        targets[f"deleting the 5,488-child record < {DELETE_LIMIT_S:.0f} s"] = rows[-1]["delete s"] < DELETE_LIMIT_S
    for what, met in targets.items():
        print(f"{'met    ' if met else 'NOT MET'}  {what}")
    print("\nuptime:", uptime())


if __name__ == "__main__":
    main()
