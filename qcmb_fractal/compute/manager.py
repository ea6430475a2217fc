"""``qcmb-fractal-compute``: QCFractal's own ComputeManager with warm workers and claims as workers free up.

Activation, heartbeats, claiming, returning (with deferred retries), statistics and deactivation stay
QCFractal's code; only how a task is run and when the manager wakes up change. QCFractal internals this
relies on, all of qcfractalcompute 0.71 (pinned in pyproject.toml), and why:

- ``ComputeManager.__init__``: reads nothing new; discovers programs (``AppManager``) and activates.
- ``ComputeManager._update(new_tasks=False)``: returns finished tasks, retries deferred returns, keeps
  statistics; we claim ourselves afterwards because its claim step sizes the claim as 3x the workers of a
  parsl executor (``self.dflow_kernel.executors`` and ``_get_max_workers``), and we run no parsl.
- ``self._task_futures`` / ``self._record_id_map``: filled by our ``_submit_tasks`` with futures that have
  ``.done()``/``.result()``, which is all ``_acquire_complete_tasks`` uses.
- ``self.app_manager._parsl_apps``: the discovered (function, programs, app) triples; ``get_app`` would wrap
  the app in a parsl app, so we look it up here and run QCFractal's own run script in a warm worker.
- ``start()`` and ``stop()`` are replaced: QCFractal's build a parsl DataFlowKernel and run an
  ``InterruptableScheduler`` whose ``interrupt()`` drops all scheduled events, so it cannot be woken early.
"""

import functools
import logging
import threading
import time
from concurrent.futures import Future
from concurrent.futures import wait as future_wait
from typing import Any

from qcfractalcompute.apps.qcengine import qcengine_conda_app
from qcfractalcompute.compute_manager import ComputeManager
from qcfractalcompute.config import FractalComputeConfig, LocalExecutorConfig
from qcportal.client_base import AllowedConnectionExceptions
from qcportal.record_models import RecordTask
from qcportal.utils import apply_jitter

from qcmb_fractal.compute.worker import WarmPool, failed_result, run_qcengine
from qcmb_fractal.errors import InputError

CLAIM_AHEAD = 2  # tasks claimed beyond the free workers, so a finishing worker finds its next task waiting
COALESCE_SECONDS = 0.1  # after a task finishes, wait this long for others so their returns share one request


class ManagerConfigError(InputError):
    """The manager.yaml asks for something this manager does not do."""


def check_config(config: FractalComputeConfig) -> None:
    """Refuse what only parsl-backed QCFractal managers can do, before the server ever hears of us."""
    for label, executor in config.executors.items():
        if not isinstance(executor, LocalExecutorConfig):
            raise ManagerConfigError(
                f"executor {label!r} has type {executor.type!r}; qcmb-fractal-compute runs only type 'local' "
                f"executors (use qcfractal-compute-manager for {executor.type!r}, or change it to 'local')"
            )


class _NamedAdapter(logging.LoggerAdapter):
    """Every record of this manager names it, as the server's manager list does."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['manager']}] {msg}", kwargs


class WarmComputeManager(ComputeManager):
    """A QCFractal compute manager whose workers stay warm and which claims as soon as one frees up."""

    def __init__(
        self, config: FractalComputeConfig, claim_ahead: int = CLAIM_AHEAD, coalesce: float = COALESCE_SECONDS
    ) -> None:
        check_config(config)
        self._wake = threading.Event()
        # Workers start first and warm up (QCEngine import, CPU probe) while QCFractal discovers programs and
        # activates; start() waits for them, so the manager claims nothing it cannot start at once.
        self._pools: dict[str, WarmPool] = {
            label: WarmPool(ex, ex.max_workers, config.cluster, self._wake.set)
            for label, ex in config.executors.items()
        }
        self._warming = [f for pool in self._pools.values() for f in pool.warm_up()]
        try:
            super().__init__(config)
        except BaseException:
            for pool in self._pools.values():
                pool.shutdown()
            raise
        self.logger = _NamedAdapter(logging.getLogger("qcmb_fractal.compute"), {"manager": config.cluster})
        self.claim_ahead, self.coalesce = claim_ahead, coalesce
        self.handed_back = 0  # claimed tasks given back to the server at shutdown

    # -- running tasks ------------------------------------------------------------------------------------

    def _app(self, executor_label: str, task: RecordTask) -> Any:
        for name, programs, func in self.app_manager._parsl_apps[executor_label]:
            if task.function == name and set(task.required_programs) <= programs.keys():
                return func
        return None

    def _submit_tasks(self, executor_label: str, tasks: list[RecordTask]) -> None:
        config = self.manager_config.executors[executor_label]
        pool = self._pools[executor_label]
        for task in tasks:
            app = self._app(executor_label, task)
            if app is None:
                future: Future = Future()
                message = f"No app available for function {task.function}, programs {task.required_programs}"
                future.set_result(failed_result("KeyError", message))
            elif (
                isinstance(app, functools.partial)
                and app.func is qcengine_conda_app
                and app.keywords.get("conda_env_name") is None
            ):
                future = pool.submit(run_qcengine, task.function_kwargs_compressed, config)
            else:  # another conda environment, apptainer, geometric: QCFractal's own app, in a worker
                future = pool.submit(app, task.record_id, task.function_kwargs_compressed, executor_config=config)
            self._task_futures[executor_label][task.id] = future
            self._record_id_map[task.id] = task.record_id

    def _claim(self) -> None:
        active = self.n_active_tasks
        for label, config in self.manager_config.executors.items():
            open_slots = self._pools[label].max_workers + self.claim_ahead - active[label]
            if open_slots <= 0:
                continue
            try:
                tasks = self.client.claim(self.executor_programs[label], config.compute_tags, open_slots)
            except AllowedConnectionExceptions as ex:
                self.logger.warning(f"Acquisition of new tasks failed: {str(ex).strip()}")
                return
            if tasks:
                self.logger.info(f"Executor {label}: claimed {len(tasks)} new tasks ({open_slots} open slots)")
            self.preprocess_new_tasks(tasks)
            self._submit_tasks(label, tasks)

    def _update(self, new_tasks: bool) -> None:
        super()._update(new_tasks=False)  # return and account; QCFractal's claim step needs parsl
        if new_tasks and not self.n_deferred_tasks:  # a failed return means the server is away: claim later
            self._claim()

    # -- the loop ---------------------------------------------------------------------------------------

    def start(self, manual_updates: bool = False) -> None:
        """Run until :meth:`stop`: update when a task finishes or every update_frequency, heartbeat on time."""
        for future in self._warming:
            while not self._is_stopping and not future.done():
                self.heartbeat()
                future_wait([future], timeout=self.heartbeat_frequency)
        self.logger.info("Compute Manager successfully started.")
        self._failed_heartbeats = 0
        self._idle_start_time = time.time()
        now = time.monotonic()
        next_update = next_heartbeat = now
        while not self._is_stopping:
            now = time.monotonic()
            if now >= next_heartbeat:
                if not manual_updates:
                    self.heartbeat()
                next_heartbeat = now + apply_jitter(self.heartbeat_frequency, self.heartbeat_frequency_jitter)
            if now >= next_update:
                self._wake.clear()
                if not manual_updates:
                    self.update(new_tasks=True)
                config = self.manager_config
                next_update = time.monotonic() + apply_jitter(config.update_frequency, config.update_frequency_jitter)
            if self._is_stopping:
                break
            if self._wake.wait(max(0.0, min(next_update, next_heartbeat) - time.monotonic())):
                time.sleep(self.coalesce)  # let neighbours finish too: one return request for all of them
                next_update = time.monotonic()
        self._shutdown()

    def _shutdown(self) -> None:
        """Give unstarted tasks back, return finished ones, deactivate (the server recycles the rest), stop."""
        for label, futures in self._task_futures.items():
            cancelled = set(self._pools[label].cancel_unstarted(list(futures.values())))
            for task_id in [t for t, f in futures.items() if f in cancelled]:
                del futures[task_id]
            self.handed_back += len(cancelled)
        try:
            self.update(new_tasks=False)
            running = self.n_total_active_tasks
            self.client.deactivate(
                active_tasks=self.statistics.active_tasks,
                active_cores=self.statistics.active_cores,
                active_memory=self.statistics.active_memory,
                total_cpu_hours=self.statistics.total_cpu_hours,
            )
            self.handed_back += running
            self.logger.info(f"Deactivated; {self.handed_back} claimed tasks handed back to the server")
        except Exception as ex:
            self.logger.warning(f"Deactivation failed for {self.name}: {str(ex).strip()}")
        for pool in self._pools.values():
            pool.shutdown()
        self.logger.info("Compute manager stopped.")

    def stop(self) -> None:
        """Safe from a signal handler or another thread: the loop wakes up and shuts down."""
        self.logger.info("Manager stopping")
        self._is_stopping = True
        self._wake.set()
