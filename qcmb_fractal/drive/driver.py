"""The level-by-level state machine. It hands out fragment calculations and takes results back; it never
knows where they run, so the local pool, MPI, a QCPortal client and the QCFractal service all share it."""

import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping

from pydantic import BaseModel
from qcelemental.models.v2 import AtomicResult
from qcmanybody.models.v2 import ManyBodyResult

from qcmb_fractal.drive.state import ComponentProperties, DriverState, FailureKind, TaskRecord, TaskStatus
from qcmb_fractal.errors import RunFailed
from qcmb_fractal.plan import FragmentTask, Plan

logger = logging.getLogger(__name__)


QCENGINE_SECTIONS = re.compile(r"^(INPUT|STDOUT|STDERR|TRACEBACK):\s*$", re.MULTILINE)


def error_summary(error: str) -> str:
    """One line that says why a calculation failed.

    QCEngine's program errors are 'type: message INPUT: ... STDOUT: ... STDERR: ... TRACEBACK: ...', whose
    last line is often 'NoneType: None'; the program's own last words on stderr (or an error line on
    stdout) are what a person needs. Other errors keep their last line, where Python puts the exception.
    """
    text = error.strip()
    if not text:
        return "no message"
    parts = QCENGINE_SECTIONS.split(text)
    if len(parts) < 3:
        return text.splitlines()[-1].strip()
    kind = parts[0].split(":", 1)[0].strip()
    sections = {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}
    stderr = [ln.strip() for ln in sections.get("STDERR", "").splitlines() if ln.strip()]
    stdout = [ln.strip() for ln in sections.get("STDOUT", "").splitlines() if ln.strip()]
    flagged = [ln for ln in stdout if re.search(r"error|fail|abort", ln, re.IGNORECASE)]
    why = (stderr or flagged or stdout[-1:] or [parts[0].strip()])[-1]
    return f"{kind}: {why}"[:300]


class LevelProgress(BaseModel):
    level: int
    total: int
    complete: int = 0
    running: int = 0
    error: int = 0

    @property
    def waiting(self) -> int:
        return self.total - self.complete - self.running - self.error


class ManyBodyDriver:
    """Drives one many-body expansion.

    ``mode="levels"`` hands out level n only once level n-1 is complete (what a service that wants
    per-level checkpoints or screening needs); ``mode="eager"`` hands out everything at once, largest
    first, because no step of a plain MBE needs lower levels' results, and that is fastest.
    """

    def __init__(self, plan: Plan, state: DriverState | None = None, **settings) -> None:
        self.plan = plan
        self.state = state or DriverState(input=plan.input, **settings)
        unknown = set(self.state.tasks) - set(plan.by_hash)
        if unknown:
            raise ValueError(f"state holds {len(unknown)} tasks that are not in this plan; wrong state file?")
        # Counts kept as statuses change, so the checks after every finished task cost O(1), not O(tasks)
        self._counts: Counter[TaskStatus] = Counter(rec.status for rec in self.state.tasks.values())
        self._level_complete: Counter[int] = Counter(
            plan.by_hash[k].level for k, rec in self.state.tasks.items() if rec.status is TaskStatus.complete
        )
        self._build_schedule()

    def _build_schedule(self) -> None:
        """Sort the plan's tasks once (again only if the plan grows). next_batch resumes its scan where the
        last one ended (``_cursor``): every task before it is handed out or done, until one goes back to
        waiting, which rewinds it."""
        order = sorted(self.plan.tasks, key=self._priority)
        self._largest_first = {None: order} | {lvl: [t for t in order if t.level == lvl] for lvl in self.plan.levels}
        self._cursor: dict[int | None, int] = {}

    @staticmethod
    def _priority(task: FragmentTask) -> tuple:
        """Largest first."""
        return (-task.cost, task.hash)

    @classmethod
    def from_state(cls, state: DriverState, plan: Plan | None = None) -> "ManyBodyDriver":
        return cls(plan or Plan(state.input), state)

    def record(self, task: FragmentTask | str) -> TaskRecord:
        key = task if isinstance(task, str) else task.hash
        return self.state.tasks.get(key) or TaskRecord()

    def status(self, task: FragmentTask) -> TaskStatus:
        # Called for every task on every scheduling step, so no TaskRecord is built for absent tasks:
        # that alone cost ~5 s of the main process's CPU over a 1350-task xtb run.
        rec = self.state.tasks.get(task.hash)
        return TaskStatus.waiting if rec is None else rec.status

    def _set(self, key: str, **changes) -> TaskRecord:
        old = self.state.tasks.get(key)
        rec = (old or TaskRecord()).model_copy(update=changes)
        self.state.tasks[key] = rec
        before = old.status if old is not None else None
        if rec.status is not before:
            if before is not None:
                self._counts[before] -= 1
            self._counts[rec.status] += 1
            level = self.plan.by_hash[key].level
            if before is TaskStatus.complete:
                self._level_complete[level] -= 1
            if rec.status is TaskStatus.complete:
                self._level_complete[level] += 1
            if rec.status is TaskStatus.waiting:
                self._cursor.clear()
        return rec

    @property
    def active_level(self) -> int | None:
        """Lowest level with unfinished work; in eager mode every level is active at once."""
        for level in self.plan.levels:
            if self._level_complete[level] < len(self.plan.tasks_at(level)):
                return level
        return None

    def _schedule(self) -> tuple[int | None, list[FragmentTask]]:
        """The tasks the current mode allows to run (the active level's, or all in eager mode), largest first,
        with the key of their schedule."""
        if self.state.mode == "levels":
            level = self.active_level
            return level, self._largest_first[level] if level is not None else []
        return None, self._largest_first[None]

    def _reachable(self) -> list[FragmentTask]:
        return self._schedule()[1]

    def next_batch(self, limit: int | None = None) -> list[FragmentTask]:
        """Waiting tasks that may start now, largest first; they are marked running."""
        key, order = self._schedule()
        ready: list[FragmentTask] = []
        i = self._cursor.get(key, 0)
        while i < len(order) and (limit is None or len(ready) < limit):
            if self.status(order[i]) is TaskStatus.waiting:
                ready.append(order[i])
            i += 1
        for t in ready:
            self._set(t.hash, status=TaskStatus.running)
        self._cursor[key] = i
        return ready

    def record_result(
        self,
        key: str,
        properties: ComponentProperties,
        *,
        worker: str | None = None,
        wall_time: float | None = None,
        reference: str | None = None,
    ) -> None:
        if key not in self.plan.by_hash:
            raise KeyError(f"no task {key} in this plan")
        self._set(
            key,
            status=TaskStatus.complete,
            properties=properties,
            error=None,
            failure=None,
            worker=worker,
            wall_time=wall_time,
            reference=reference,
        )

    def record_failure(
        self,
        key: str,
        error: str,
        *,
        kind: FailureKind | None = None,
        worker: str | None = None,
        retry: bool = True,
    ) -> bool:
        """Count a failed attempt; returns True when the task goes back to the queue for another try.

        An input error (``kind``) or ``retry=False`` fails the task for good at once: another try gives the same.
        """
        rec = self.record(key)
        attempts = rec.attempts + 1
        retry = retry and (kind is None or kind.retryable) and attempts < self.state.max_attempts
        status = TaskStatus.waiting if retry else TaskStatus.error
        self._set(key, status=status, attempts=attempts, error=error, failure=kind, worker=worker)
        task = self.plan.by_hash[key]
        logger.warning(
            "%s failed on %s (attempt %d of %d)%s: %s",
            task.label,
            worker or "?",
            attempts,
            self.state.max_attempts,
            ", will retry" if retry else "",
            error_summary(error),
        )
        return retry

    def release(self, key: str) -> None:
        """Give a handed-out task back unrun (e.g. its backend stopped), without counting an attempt."""
        if self.record(key).status is TaskStatus.running:
            self._set(key, status=TaskStatus.waiting)

    def running(self) -> list[str]:
        """The keys of the tasks handed out and not yet back."""
        return [k for k, rec in self.state.tasks.items() if rec.status is TaskStatus.running]

    def release_running(self) -> int:
        """Give back every handed-out task (the run stops); returns how many there were."""
        running = self.running()
        for key in running:
            self._set(key, status=TaskStatus.waiting)
        return len(running)

    def restart_failed(self, key: str) -> None:
        """A task that failed for good runs again with fresh attempts (its record was reset after a fix);
        it counts as handed out, since whoever reset it runs it."""
        if self.record(key).status is TaskStatus.error:
            self._set(key, status=TaskStatus.running, attempts=0)

    def count(self, status: TaskStatus) -> int:
        """How many of the plan's tasks are in ``status``."""
        if status is TaskStatus.waiting:  # tasks never handed out have no record
            return len(self.plan.tasks) - sum(n for s, n in self._counts.items() if s is not TaskStatus.waiting)
        return self._counts[status]

    @property
    def failed_attempts(self) -> int:
        """Failed attempts over all tasks (a complete task's earlier failures included)."""
        return sum(rec.attempts for rec in self.state.tasks.values())

    def failed_records(self) -> list[tuple[FragmentTask, TaskRecord]]:
        """Every task that failed for good with its record, by label."""
        out = [(self.plan.by_hash[k], rec) for k, rec in self.state.tasks.items() if rec.status is TaskStatus.error]
        return sorted(out, key=lambda pair: pair[0].label)

    def reset_errors(self) -> int:
        """Give failed-for-good tasks a fresh set of attempts (after the user fixed the cause)."""
        n = 0
        for key, rec in list(self.state.tasks.items()):
            if rec.status is TaskStatus.error:
                self._set(key, status=TaskStatus.waiting, attempts=0)
                n += 1
        return n

    @property
    def complete(self) -> bool:
        return self._counts[TaskStatus.complete] == len(self.plan.tasks)

    @property
    def failed(self) -> bool:
        """No more progress is possible: some task failed for good and nothing else can run."""
        if self._counts[TaskStatus.running] or not self._counts[TaskStatus.error]:
            return False
        return not any(self.status(t) is TaskStatus.waiting for t in self._reachable())

    @property
    def finished(self) -> bool:
        return self.complete or self.failed

    def progress(self) -> list[LevelProgress]:
        out = {lvl: LevelProgress(level=lvl, total=0) for lvl in self.plan.levels}
        for t in self.plan.tasks:
            lp = out[t.level]
            lp.total += 1
            status = self.status(t)
            if status is TaskStatus.complete:
                lp.complete += 1
            elif status is TaskStatus.running:
                lp.running += 1
            elif status is TaskStatus.error:
                lp.error += 1
        return list(out.values())

    def failures(self) -> dict[str, str]:
        """Label → last error of every task that failed for good."""
        return {
            self.plan.by_hash[k].label: rec.error or "unknown error"
            for k, rec in self.state.tasks.items()
            if rec.status is TaskStatus.error
        }

    def failure_table(self) -> str:
        rows = [f"  {label}: {error_summary(err)}" for label, err in sorted(self.failures().items())]
        return "\n".join(rows)

    def component_properties(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for t in self.plan.tasks:
            rec = self.record(t)
            if rec.status is not TaskStatus.complete or rec.properties is None:
                continue
            values = rec.properties.as_arrays()
            for label in t.labels:
                out[label] = values
        return out

    def _require_complete(self) -> None:
        if not self.complete:
            failures = self.failures()
            if failures:
                raise RunFailed(
                    f"{len(failures)} fragment calculation(s) failed after {self.state.max_attempts} attempts:\n"
                    + self.failure_table(),
                    failures,
                )
            raise RuntimeError("finalize() called before every fragment calculation finished")

    def finalize(self, cluster_results: Mapping[str, AtomicResult] | None = None) -> ManyBodyResult:
        """Run QCManyBody's analysis on the collected results; exactly what its serial computer does."""
        self._require_complete()
        props = self.component_properties()
        analysis = self.plan.core.analyze(props)
        analysis["nbody_number"] = len(props)
        clusters = _expand_labels(self.plan.tasks, cluster_results or {})
        return self.plan.computer.get_results(external_results=analysis, component_results=clusters)


def _expand_labels(tasks: Iterable[FragmentTask], by_hash: Mapping[str, AtomicResult]) -> dict[str, AtomicResult]:
    return {label: by_hash[t.hash] for t in tasks if t.hash in by_hash for label in t.labels}
