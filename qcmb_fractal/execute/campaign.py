"""Many inputs on one warm pool: one driver and one checkpoint per input, one queue, largest calculations first.

A campaign keeps a :class:`Runner` per input (its driver, checkpoint and statistics, exactly as a single run
has them) and merges what their drivers hand out into one queue ordered across all inputs, so the pool is
started once and the biggest calculations of the whole campaign start first. Workers learn every input once,
when they start (:class:`CampaignPlan`), and build each :class:`SourcedTask` from its own input.
"""

import csv
import heapq
import io
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from qcelemental import constants
from qcmanybody.models.v2 import ManyBodyResult
from tqdm import tqdm

from qcmb_fractal.errors import RunFailed
from qcmb_fractal.execute.base import Backend, TaskOutcome
from qcmb_fractal.execute.checkpoint import Checkpoint
from qcmb_fractal.execute.interrupts import raise_if_asked, wait_timeout
from qcmb_fractal.execute.runner import Runner
from qcmb_fractal.execute.worker import SourcedTask
from qcmb_fractal.plan import FragmentTask, Plan
from qcmb_fractal.plan.screening import SCREEN_MC
from qcmb_fractal.report import bsse_types, levels

logger = logging.getLogger(__name__)

SUMMARY_COLUMNS = (
    "input",
    "status",
    "bsse_type",
    "nbody",
    "total_energy_eh",
    "interaction_energy_eh",
    "interaction_energy_kcal_mol",
    "result_file",
    "error",
)


class CampaignPlan:
    """What ``Backend.start`` of the local and MPI backends reads of a plan, for a whole campaign: ``input`` (the
    first one, the workers' default), ``sources`` (every input's JSON by key, shipped to each worker once, see
    ``worker.shipped_inputs``) and ``builder.specifications`` (every input's model chemistries, for the local
    backend's check that their programs are installed)."""

    def __init__(self, plans: Mapping[str, Plan]) -> None:
        self.input = next(iter(plans.values())).input
        self.sources = {key: plan.input.model_dump_json() for key, plan in plans.items()}
        specifications = {
            f"{key}/{mc}": entry for key, plan in plans.items() for mc, entry in plan.builder.specifications.items()
        }
        self.builder = SimpleNamespace(specifications=specifications)


@dataclass
class Member:
    """One input of a campaign: its plan and where its result and checkpoint go."""

    name: str
    plan: Plan
    output: Path
    checkpoint: Checkpoint | None = None


@dataclass
class MemberOutcome:
    """How one input ended: its result, or why there is none."""

    name: str
    output: Path | None = None
    result: ManyBodyResult | None = None
    error: str | None = None
    status: Literal["ok", "failed", "bad input"] = "ok"


def _priority(task: FragmentTask) -> tuple:
    """Across inputs: screening first (it unlocks the next level), then largest first, as within one input."""
    return (task.mc != SCREEN_MC, -task.cost)


class Campaign:
    """Runs every member's expansion on one backend; ``on_finished`` hears of each input as soon as it ends,
    so its result is written while the others still run."""

    def __init__(
        self,
        members: Iterable[Member],
        backend: Backend,
        *,
        mode: Literal["levels", "eager"] = "eager",
        max_attempts: int = 3,
        progress: bool | None = None,
        on_finished: Callable[[Member, ManyBodyResult | None, RunFailed | None], None] | None = None,
    ) -> None:
        self.members = {str(i): m for i, m in enumerate(members)}
        self.backend = backend
        self.progress = progress
        self.on_finished = on_finished
        self.runners = {
            key: Runner(m.plan, backend, checkpoint=m.checkpoint, mode=mode, max_attempts=max_attempts, progress=False)
            for key, m in self.members.items()
        }
        self.results: dict[str, ManyBodyResult] = {}
        self.failures: dict[str, RunFailed] = {}
        self._buffers: dict[str, deque[FragmentTask]] = {key: deque() for key in self.runners}
        self._heap: list[tuple[tuple, int, str]] = []
        self._pending: dict[Future, list[tuple[str, FragmentTask]]] = {}  # each calculation and who waits for it
        self._running: dict[str, Future] = {}
        # Calculations in more than one input's plan, and the outcomes of those done: each runs once.
        counts = Counter(t.hash for r in self.runners.values() for t in r.plan.tasks)
        self._shared = {digest for digest, n in counts.items() if n > 1}
        self._shared_done: dict[str, TaskOutcome] = {}
        self._seq = 0

    def _total(self) -> int:
        return sum(len(r.plan.tasks) for r in self.runners.values())

    def _refill(self, key: str, limit: int | None) -> None:
        """Take the input's next tasks from its driver (they are marked running) and queue the first of them."""
        buffer = self._buffers[key]
        if not buffer:
            buffer.extend(self.runners[key].driver.next_batch(limit=limit))
            if buffer:
                self._seq += 1
                heapq.heappush(self._heap, (_priority(buffer[0]), self._seq, key))

    def _take(self, room: int | None) -> list[tuple[str, FragmentTask]]:
        """Up to ``room`` tasks, largest first across all inputs (a k-way merge of the drivers' own orders)."""
        batch: list[tuple[str, FragmentTask]] = []
        while self._heap and (room is None or len(batch) < room):
            _, _, key = heapq.heappop(self._heap)
            buffer = self._buffers[key]
            batch.append((key, buffer.popleft()))
            if buffer:
                self._seq += 1
                heapq.heappush(self._heap, (_priority(buffer[0]), self._seq, key))
            else:
                self._refill(key, 1 if room is not None else None)
        return batch

    def _finish(self, key: str, keep: dict[str, TaskOutcome], t0: float) -> None:
        member, runner = self.members[key], self.runners[key]
        try:
            result = runner.finish(keep, time.perf_counter() - t0)
        except RunFailed as err:
            logger.warning("campaign: %s failed: %d calculation(s) failed for good", member.name, len(err.failures))
            self.failures[key] = err
            if self.on_finished is not None:
                self.on_finished(member, None, err)
            return
        logger.info("campaign: %s finished (%d calculations)", member.name, len(runner.plan.tasks))
        self.results[key] = result
        if self.on_finished is not None:
            self.on_finished(member, result, None)

    def _submit(self, batch: list[tuple[str, FragmentTask]]) -> None:
        """Hand ``batch`` to the backend, each calculation once: a hash already running gains a waiter instead."""
        waiting: dict[str, list[tuple[str, FragmentTask]]] = {}  # by hash, in the order taken
        for key, task in batch:
            self.runners[key].level_start.setdefault(task.level, time.perf_counter())
            if task.hash in self._running:
                self._pending[self._running[task.hash]].append((key, task))
            else:
                waiting.setdefault(task.hash, []).append((key, task))
        for digest in [d for d in waiting if d in self._shared_done]:  # done for another input: no need to rerun
            fut: Future = Future()
            fut.set_result(self._shared_done[digest])
            self._pending[fut] = waiting.pop(digest)
            self._running[digest] = fut
        tagged = [SourcedTask(**task.model_dump(), source=key) for (key, task), *_ in waiting.values()]
        for fut, (digest, waiters) in zip(self.backend.submit_many(tagged), waiting.items(), strict=True):
            self._pending[fut] = waiters
            self._running[digest] = fut

    def _commit_due(self) -> float | None:
        """Seconds until some input's checkpoint must commit what it stored (None: nothing waits)."""
        dues = [r.checkpoint.due_in() for r in self.runners.values() if r.checkpoint is not None]
        return min((d for d in dues if d is not None), default=None)

    def _collect(self, fut: Future, keeps: dict[str, dict[str, TaskOutcome]], bar: tqdm) -> set[str]:
        """Give a finished calculation's outcome to every input waiting for it; the keys of those inputs."""
        waiters = self._pending.pop(fut)
        digest = waiters[0][1].hash
        del self._running[digest]
        try:
            outcome = fut.result()
        except Exception as exc:
            outcome = TaskOutcome.from_exception(digest, exc)
        if outcome.success and digest in self._shared:
            self._shared_done[digest] = outcome
        for key, task in waiters:
            runner = self.runners[key]
            if runner._accept(task, outcome, keeps[key]):
                bar.update(1)
                runner.level_end[task.level] = time.perf_counter()
        return {key for key, _ in waiters}

    def run(self) -> None:
        """Run to the end; each input's result or failure goes to ``on_finished`` (and ``results``/``failures``).

        A calculation several inputs share (same fragment, same model chemistry: same hash) runs once and its
        outcome goes to each of them; backends that key their work by hash (MPI) rely on that when they run
        at the same time. Plans that grow (screening) share only what their first levels hold.
        """
        t0 = time.perf_counter()
        keeps = {key: runner._restore() for key, runner in self.runners.items()}
        bar = tqdm(
            total=self._total(),
            initial=sum(r.reused for r in self.runners.values()),
            desc=f"{len(self.runners)} inputs",
            unit="calc",
            disable=None if self.progress is None else not self.progress,
            dynamic_ncols=True,
        )
        open_keys = set(self.runners)
        for key in sorted(self.runners, key=int):  # finished before: read back, no pool needed for them
            if self.runners[key].driver.finished:
                open_keys.discard(key)
                self._finish(key, keeps[key], t0)
        logger.info(
            "campaign: %d inputs, %d calculations, %d already finished",
            len(self.runners),
            self._total(),
            sum(r.reused for r in self.runners.values()),
        )
        if not open_keys:
            bar.close()
            return
        dirty = set(open_keys)  # inputs whose driver may have new work or be finished
        self.backend.start(CampaignPlan({key: r.plan for key, r in self.runners.items()}))
        try:
            while True:
                capacity = self.backend.capacity
                room = None if capacity is None else max(0, capacity - len(self._pending))
                for key in sorted(dirty & open_keys, key=int):
                    if self._buffers[key]:
                        continue
                    if self.runners[key].driver.finished:
                        open_keys.discard(key)
                        self._finish(key, keeps[key], t0)
                    else:
                        self._refill(key, None if room is None else max(1, room))
                dirty.clear()
                self._submit(self._take(room) if room != 0 else [])
                if not self._pending:
                    break
                done, _ = wait(self._pending, timeout=wait_timeout(self._commit_due()), return_when=FIRST_COMPLETED)
                raise_if_asked()
                for runner in self.runners.values():
                    if runner.checkpoint is not None:
                        runner.checkpoint.commit_if_due()
                known = self._total()
                for fut in done:
                    dirty |= self._collect(fut, keeps, bar)
                if self._total() != known:  # a screened plan grew
                    bar.total = self._total()
                    bar.refresh()
        except BaseException:
            for fut in self._pending:
                fut.cancel()
            # tasks handed out but not yet submitted, or submitted when it happened, go back unrun
            for runner in self.runners.values():
                runner.driver.release_running()
            raise
        finally:
            for runner in self.runners.values():
                if runner.checkpoint is not None:
                    runner.checkpoint.commit()
            bar.close()
        for key in sorted(open_keys, key=int):  # nothing left to run: they are finished or stuck
            self._finish(key, keeps[key], t0)


def summary_rows(outcomes: Iterable[MemberOutcome]) -> list[dict[str, Any]]:
    """One row per input, BSSE treatment and n-body level; a failed or bad input gets one row saying why."""
    rows: list[dict[str, Any]] = []
    for o in outcomes:
        base = {"input": o.name, "status": o.status, "result_file": str(o.output) if o.output else ""}
        if o.result is None:
            rows.append({**base, "error": (o.error or "").splitlines()[0] if o.error else ""})
            continue
        for bsse in bsse_types(o.result):
            total = dict(levels(o.result, bsse, "total"))
            inter = dict(levels(o.result, bsse, "interaction"))
            for n in sorted(total.keys() | inter.keys()):
                ie = inter.get(n)
                rows.append(
                    {
                        **base,
                        "bsse_type": bsse,
                        "nbody": n,
                        "total_energy_eh": total.get(n),
                        "interaction_energy_eh": ie,
                        "interaction_energy_kcal_mol": None if ie is None else ie * constants.hartree2kcalmol,
                    }
                )
    return rows


def summary_csv(outcomes: Iterable[MemberOutcome]) -> str:
    """The campaign's summary table as CSV text (full float precision; empty cells where nothing applies)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in summary_rows(outcomes):
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in SUMMARY_COLUMNS})
    return buf.getvalue()
