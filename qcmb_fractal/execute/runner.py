"""The loop between a driver and a backend: hand out, collect, checkpoint, report, finalize."""

import logging
import time
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Literal

from pydantic import BaseModel
from qcmanybody.models.v2 import ManyBodyResult
from tqdm import tqdm

from qcmb_fractal.drive import DriverState, make_driver
from qcmb_fractal.errors import RunFailed
from qcmb_fractal.execute.base import Backend, TaskOutcome
from qcmb_fractal.execute.checkpoint import Checkpoint
from qcmb_fractal.execute.interrupts import raise_if_asked, wait_timeout
from qcmb_fractal.plan import FragmentTask, Plan

logger = logging.getLogger(__name__)


class RunStats(BaseModel):
    """Where the time went; stored in the result's extras under ``qcmb_fractal``."""

    backend: str
    workers: int | None = None
    tasks: int
    computed: int
    reused: int
    failed_attempts: int
    wall_time: float
    driver_cpu: float | None = None  # this process's CPU seconds in the run (all threads): bookkeeping's cost
    level_wall_time: dict[int, float]
    task_time: dict[str, float]
    worker_busy: dict[str, float]
    utilization: float | None = None


class Runner:
    def __init__(
        self,
        plan: Plan,
        backend: Backend,
        *,
        checkpoint: Checkpoint | None = None,
        mode: Literal["levels", "eager"] = "eager",
        max_attempts: int = 3,
        progress: bool | None = None,
    ) -> None:
        self.plan = plan
        self.backend = backend
        self.checkpoint = checkpoint
        self.driver = make_driver(plan, DriverState(input=plan.input, mode=mode, max_attempts=max_attempts))
        self.progress = progress
        self.reused = 0
        self.failed_attempts = 0
        self.level_start: dict[int, float] = {}
        self.level_end: dict[int, float] = {}
        self.task_time: dict[str, float] = {}
        self.worker_busy: dict[str, float] = defaultdict(float)

    def _restore(self) -> dict[str, TaskOutcome]:
        if self.checkpoint is None:
            return {}
        stored: dict[str, TaskOutcome] = {}
        unusable: set[str] = set()  # rows of a run that kept only properties, where whole results are wanted
        # A screened plan grows as restored screening results decide levels: look again for the new tasks.
        while found := self.checkpoint.load(set(self.plan.by_hash) - set(stored) - unusable):
            for key, outcome in found.items():
                if outcome.properties is None or (self._whole_results and outcome.result is None):
                    unusable.add(key)
                    continue
                self.driver.record_result(key, outcome.properties, worker=outcome.worker, wall_time=outcome.wall_time)
                stored[key] = outcome
        self.reused = len(stored)
        if stored:
            logger.info(
                "resumed %d of %d calculations from %s",
                len(stored),
                len(self.plan.tasks),
                self.checkpoint.path,
            )
        return stored

    def _bars(self) -> dict[int, tqdm]:
        bars = {}
        for i, lp in enumerate(self.driver.progress()):
            bars[lp.level] = tqdm(
                total=lp.total,
                initial=lp.complete,
                desc=f"{lp.level}-body",
                unit="calc",
                position=i,
                leave=True,
                disable=None if self.progress is None else not self.progress,
                dynamic_ncols=True,
            )
        return bars

    def _grow_bars(self, bars: dict[int, tqdm]) -> None:
        for lp in self.driver.progress():
            if bars[lp.level].total != lp.total:
                bars[lp.level].total = lp.total
                bars[lp.level].refresh()

    def _accept(self, task: FragmentTask, outcome: TaskOutcome, keep: dict[str, TaskOutcome]) -> bool:
        if outcome.success and outcome.properties is not None:
            if self.checkpoint is not None:
                self.checkpoint.put(outcome, task.label)
            self.task_time[task.label] = round(outcome.wall_time, 4)
            self.worker_busy[outcome.worker] += outcome.wall_time
            if self._whole_results:
                keep[task.hash] = outcome
            self.driver.record_result(
                task.hash,
                outcome.properties,
                worker=outcome.worker,
                wall_time=outcome.wall_time,
                reference=outcome.reference,
            )
            return True
        self.failed_attempts += 1
        error = outcome.error or "unknown error"
        self.driver.record_failure(task.hash, error, kind=outcome.kind, worker=outcome.worker)
        return False

    def run(self) -> ManyBodyResult:
        t0, cpu0 = time.perf_counter(), time.process_time()
        keep = self._restore()
        pending: dict[Future, FragmentTask] = {}
        bars = self._bars()
        self.backend.start(self.plan)
        try:
            while not self.driver.finished:
                capacity = self.backend.capacity
                room = None if capacity is None else max(0, capacity - len(pending))
                batch = self.driver.next_batch(limit=room) if room != 0 else []
                for task in batch:
                    self.level_start.setdefault(task.level, time.perf_counter())
                for fut, task in zip(self.backend.submit_many(batch), batch, strict=True):
                    pending[fut] = task
                if not pending:
                    break
                due = self.checkpoint.due_in() if self.checkpoint is not None else None
                done, _ = wait(pending, timeout=wait_timeout(due), return_when=FIRST_COMPLETED)
                raise_if_asked()
                if self.checkpoint is not None:
                    self.checkpoint.commit_if_due()
                for fut in done:
                    task = pending.pop(fut)
                    try:
                        outcome = fut.result()
                    except Exception as exc:
                        outcome = TaskOutcome.from_exception(task.hash, exc)
                    known = len(self.plan.tasks)
                    if self._accept(task, outcome, keep):
                        bars[task.level].update(1)
                        self.level_end[task.level] = time.perf_counter()
                    if len(self.plan.tasks) != known:  # a screened plan grew
                        self._grow_bars(bars)
        except BaseException:
            for fut in pending:
                fut.cancel()
            # also the batch being submitted when it happened: those tasks never reached ``pending``
            self.driver.release_running()
            raise
        finally:
            if self.checkpoint is not None:
                self.checkpoint.commit()
            for bar in bars.values():
                bar.close()
        return self.finish(keep, time.perf_counter() - t0, time.process_time() - cpu0)

    def finish(self, keep: dict[str, TaskOutcome], wall: float, driver_cpu: float | None = None) -> ManyBodyResult:
        """The result once the driver is finished (a campaign calls this per input); RunFailed if tasks failed."""
        if self.driver.failed:
            failures = self.driver.failures()
            where = f" Finished results are kept in {self.checkpoint.path};" if self.checkpoint else ""
            raise RunFailed(
                f"{len(failures)} fragment calculation(s) failed after {self.driver.state.max_attempts} "
                f"attempts:\n{self.driver.failure_table()}\n{where} fix the cause and rerun to finish the rest.",
                failures,
            )
        if self._whole_results:
            keep.update(self._restore_all_results(keep))
        result = self.driver.finalize({k: o.result for k, o in keep.items() if o.result is not None})
        stats = self.stats(wall, driver_cpu).model_dump()
        ours = {**result.extras.get("qcmb_fractal", {}), **stats}
        return result.model_copy(update={"extras": {**result.extras, "qcmb_fractal": ours}})

    @property
    def _whole_results(self) -> bool:
        """Whether the result carries every fragment's AtomicResult (QCManyBody's ``cluster_results="all"``)."""
        return self.plan.input.specification.protocols.cluster_results.value == "all"

    def _restore_all_results(self, keep: dict[str, TaskOutcome]) -> dict[str, TaskOutcome]:
        if self.checkpoint is None:
            return {}
        missing = set(self.plan.by_hash) - set(keep)
        return self.checkpoint.load(missing) if missing else {}

    def stats(self, wall: float, driver_cpu: float | None = None) -> RunStats:
        level_wall = {
            lvl: round(self.level_end[lvl] - self.level_start[lvl], 4)
            for lvl in self.level_start
            if lvl in self.level_end
        }
        workers = getattr(self.backend, "workers", None)
        busy = sum(self.worker_busy.values())
        return RunStats(
            backend=self.backend.name,
            workers=workers,
            tasks=len(self.plan.tasks),
            computed=len(self.task_time),
            reused=self.reused,
            failed_attempts=self.failed_attempts,
            wall_time=round(wall, 4),
            driver_cpu=round(driver_cpu, 4) if driver_cpu is not None else None,
            level_wall_time=level_wall,
            task_time=dict(sorted(self.task_time.items())),
            worker_busy={k: round(v, 4) for k, v in sorted(self.worker_busy.items())},
            utilization=round(min(1.0, busy / (workers * wall)), 4) if workers and wall > 0 and busy else None,
        )
