"""Record socket of qcmb_manybody: a QCFractal service that runs qcmb-fractal's ManyBodyDriver.

Each service iteration rebuilds the driver from ``service_orm.service_state`` (the DriverState JSON),
feeds it the finished singlepoint children, creates singlepoints for whatever it hands out next and
stores the state back. QCFractal errors a service as soon as all its dependencies are done and one of
them errored; the hooks route that case to :meth:`QCMBManyBodyRecordSocket.handle_failed_dependencies`,
which retries the child (up to ``max_attempts``) and only then errors the record, naming the clusters.

Operator safety: a record needing more children than the server's ``qcmb_fractal.max_children_per_record``
is refused (at submission, and again when it starts, for a limit lowered meanwhile). Each service step runs
in a savepoint and checks, before every chunk of children and at its end, that the record still runs: a
cancel or delete that lands mid-step undoes the step instead of leaving children nobody asked for.

Scale: an iteration creates at most ``qcmb_fractal.max_children_per_iteration`` children, so neither its
transaction nor the job runner grows with the record. While children of earlier batches are unfinished the
service depends on those only, so it iterates again as soon as they are done while the newest batch keeps the
managers busy; each iteration reads the results of every finished child the driver waits for. The plan of a
record is kept per process (:func:`record_plan`), so an iteration does not re-plan its record.
"""

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import tabulate
from qcelemental.models.v2.common_models import DriverEnum
from qcfractal.components.base_record_socket import BaseRecordSocket
from qcfractal.components.molecules.db_models import MoleculeORM
from qcfractal.components.outputstore.utils import create_output_orm
from qcfractal.components.record_db_models import BaseRecordORM
from qcfractal.components.record_utils import append_output, upsert_output
from qcfractal.components.services.db_models import ServiceDependencyORM, ServiceQueueORM
from qcfractal.db_socket.helpers import insert_general
from qcportal.exceptions import MissingDataError, UserReportableError
from qcportal.metadata_models import InsertCountsMetadata, InsertMetadata
from qcportal.molecules import Molecule
from qcportal.record_models import OutputTypeEnum, PriorityEnum, RecordStatusEnum
from qcportal.singlepoint import QCSpecification
from qcportal.utils import chunk_iterable, is_included, now_at_utc
from sqlalchemy import func, insert, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, aliased, joinedload, selectinload, undefer

import qcmb_fractal
from qcmb_fractal.drive import LevelProgress, ManyBodyDriver, driver_from_state, make_driver
from qcmb_fractal.drive.state import ComponentProperties, DriverState, FailureKind, TaskStatus
from qcmb_fractal.errors import InputError
from qcmb_fractal.plan import FragmentTask, Plan, make_plan
from qcmb_fractal.plan.inputs import manybody_input
from qcmb_fractal.plan.planner import estimate_task_count
from qcmb_fractal.plan.screened import ScreenedPlan
from qcmb_fractal.plan.screening import EXTRAS_KEY
from qcmb_fractal.plugin import RECORD_TYPE
from qcmb_fractal.plugin.client.record_models import (
    QCMBInput,
    QCMBMultiInput,
    QCMBQueryFilters,
    QCMBSpecification,
)
from qcmb_fractal.plugin.server.config import plugin_config
from qcmb_fractal.plugin.server.record_db_models import QCMBClusterORM, QCMBManyBodyRecordORM

logger = logging.getLogger(__name__)

# Advisory lock id for find_existing inserts; any constant distinct from QCFractal's own (14500...).
QCMB_INSERT_LOCK_ID = 14700

FAILED_DEPENDENCIES_MESSAGE = "Some task(s) did not complete successfully"

# Program errors can be whole result documents; the failure table shows the start of the last line.
ERROR_WIDTH = 200

# Children created between two checks that the record still runs (a cancel must stop a step quickly).
CHILD_CHUNK = 200
# Plans kept per server process (~4 KB per calculation), least recently used dropped first; rebuilding one costs
# 0.3 s per service iteration at 5,488 calculations and grows with the record.
PLAN_CACHE_TASKS = 50_000
# Child ids per query when reading the statuses and results of a record's children.
READ_CHUNK = 5_000
# Binomial counts above this are reported as "more than"; counting on would cost time for nothing.
COUNT_CAP = 10**9
# PostgreSQL's lock_not_available: FOR UPDATE NOWAIT found the record locked by another request.
LOCK_NOT_AVAILABLE = "55P03"
# What QCFractal's get_waiting_reason says when no active manager can take a waiting task at all.
NO_MANAGER_REASONS = ("No active managers", "No manager matches programs & tags")


class ServiceStopped(Exception):
    """The record stopped running (cancelled, deleted) or is being changed while its service step ran."""


def validated_input(molecule: Molecule, spec: QCMBSpecification):
    """The qcmanybody ManyBodyInput for a stored molecule and specification; InputError if it cannot run.

    Screening settings travel inside the input, where the driver, the plan and the result look for them.
    """
    manybody = spec.manybody
    if spec.screening is not None:
        extras = dict(manybody.get("extras") or {})
        extras[EXTRAS_KEY] = {**(extras.get(EXTRAS_KEY) or {}), "screening": spec.screening.model_dump(mode="json")}
        manybody = {**manybody, "extras": extras}
    return manybody_input({"molecule": molecule.convert_v(2).model_dump(), "specification": manybody})


def validated_plan(molecule: Molecule, spec: QCMBSpecification, max_children: int) -> Plan:
    """The plan the service will run; building it at submission turns every planning error into an HTTP 400.

    Records above the server's limit are refused from the binomial count, before anything is enumerated.
    """
    inp = validated_input(molecule, spec)
    count = estimate_task_count(inp, stop_above=COUNT_CAP)
    if count > max_children:
        kw = inp.specification.keywords
        needs = f"more than {COUNT_CAP:,}" if count > COUNT_CAP else f"{count:,}"
        raise InputError(
            f"this expansion needs {needs} fragment calculations (singlepoint children; {len(inp.molecule.fragments)} "
            f"fragments, max_nbody {kw.max_nbody}, bsse {[b.value for b in kw.bsse_type]}), more than the "
            f"{max_children:,} this server allows per record (qcmb_fractal.max_children_per_record in its "
            "configuration). Lower max_nbody, split the cluster into smaller records, or ask the server's operator "
            "to raise the limit."
        )
    return make_plan(inp, max_tasks=max_children)


def specification_hash(spec: QCMBSpecification) -> str:
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def component_properties(props: dict[str, Any], driver: str) -> ComponentProperties:
    """What the N-body analysis needs from a finished singlepoint, read as the local backend reads an AtomicResult.

    QCFractal keeps ``return_result`` among the properties, which matters for harnesses (xtb) that put the
    driver's derivative only there.
    """
    values: dict[str, Any] = {}
    for name in ("energy", "gradient", "hessian"):
        value = props.get(f"return_{name}")
        if value is None and name == driver:
            value = props.get("return_result")
        if value is None:
            continue
        if name == "energy":
            values[name] = float(value)
        elif name == "gradient":
            values[name] = np.asarray(value, dtype=float).reshape(-1, 3).tolist()
        else:
            flat = np.asarray(value, dtype=float).ravel()
            n = round(flat.size**0.5)
            values[name] = flat.reshape(n, n).tolist()
    return ComponentProperties(**values)


def _task_driver(driver: ManyBodyDriver, task: FragmentTask) -> str:
    """What a calculation computes: the expansion's driver, or an energy for a screening calculation."""
    builder = driver.plan.builder
    return DriverEnum(builder.specifications[builder.spec_name(task.mc)]["specification"]["driver"]).value


def _cluster_fields(task: FragmentTask) -> dict[str, Any]:
    return {
        "task_hash": task.hash,
        "mc_level": task.mc,
        "level": task.level,
        "fragments": list(task.real),
        "basis": list(task.basis),
        "labels": list(task.labels),
    }


_plans: "OrderedDict[int, tuple[str, Plan]]" = OrderedDict()


def record_plan(record_id: int, state: DriverState, raw_input: dict[str, Any]) -> ManyBodyDriver:
    """The driver of a service's state, on this process's cached plan of the record when it has one.

    Screened plans grow as the driver decides levels, so they are rebuilt (and replayed) every time instead.
    """
    fingerprint = input_fingerprint(raw_input)
    cached = _plans.get(record_id)
    if cached is not None and cached[0] == fingerprint:
        _plans.move_to_end(record_id)
        return make_driver(cached[1], state)
    driver = driver_from_state(state)
    if not isinstance(driver.plan, ScreenedPlan):
        remember_plan(record_id, fingerprint, driver.plan)
    return driver


def input_fingerprint(raw_input: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(raw_input, sort_keys=True, default=str).encode()).hexdigest()


def remember_plan(record_id: int, fingerprint: str, plan: Plan) -> None:
    _plans[record_id] = (fingerprint, plan)
    _plans.move_to_end(record_id)
    while len(_plans) > 1 and sum(len(p.tasks) for _, p in _plans.values()) > PLAN_CACHE_TASKS:
        _plans.popitem(last=False)


def singlepoint_error(record: BaseRecordORM) -> tuple[str | None, str]:
    """The last error a failed child reported: its ``error_type`` (None if it has none) and the error as one string."""
    if record.compute_history:
        out = record.compute_history[-1].outputs.get(OutputTypeEnum.error)
        if out is not None:
            err = out.get_output()
            if isinstance(err, dict):
                error_type = err.get("error_type")
                return error_type, f"{error_type or 'error'}: {err.get('error_message', '')}".strip()
            return None, str(err)
    return None, f"singlepoint {record.id} ended as {record.status.value} without an error message"


def waiting_reason_text(reason: dict[str, Any], most: int = 3) -> str:
    """QCFractal's get_waiting_reason answer as one line: the reason and the first few managers' details."""
    details = list((reason.get("details") or {}).items())
    text = reason.get("reason", "unknown")
    if details and text != "Waiting for a free manager":
        text += ": " + "; ".join(f"{name}: {why}" for name, why in details[:most])
        text += f"; and {len(details) - most} more" if len(details) > most else ""
    return text


class QCMBManyBodyRecordSocket(BaseRecordSocket):
    """Socket for qcmb_manybody records"""

    record_orm = QCMBManyBodyRecordORM
    record_input_type = QCMBInput
    record_multi_input_type = QCMBMultiInput

    def __init__(self, root_socket) -> None:
        BaseRecordSocket.__init__(self, root_socket)
        self._logger = logging.getLogger(__name__)

    def available(self) -> bool:
        return True

    @property
    def max_children(self) -> int:
        return plugin_config(self.root_socket.qcf_config).max_children_per_record

    @property
    def max_children_per_iteration(self) -> int:
        return plugin_config(self.root_socket.qcf_config).max_children_per_iteration

    ############################################
    # Service
    ############################################

    @staticmethod
    def _driver(service_orm: ServiceQueueORM) -> ManyBodyDriver:
        raw = service_orm.service_state["driver"]
        return record_plan(service_orm.record_id, DriverState.model_validate(raw), raw["input"])

    @staticmethod
    def _save(service_orm: ServiceQueueORM, driver: ManyBodyDriver) -> None:
        # Reassign, never mutate: the column type does not track changes inside the structure. Task records drop
        # their unset fields (a third of a big record's state, written every iteration); the input stays whole.
        state = driver.state.model_dump(mode="json", exclude={"tasks"})
        state["tasks"] = {k: t.model_dump(mode="json", exclude_defaults=True) for k, t in driver.state.tasks.items()}
        service_orm.service_state = {"driver": state}

    def initialize_service(self, session: Session, service_orm: ServiceQueueORM) -> None:
        rec: QCMBManyBodyRecordORM = service_orm.record
        spec = QCMBSpecification(**rec.specification)
        plan = validated_plan(rec.initial_molecule.to_model(Molecule), spec, self.max_children)
        driver = make_driver(plan, mode=spec.mode, max_attempts=spec.max_attempts)
        # One multi-row INSERT: a record's cluster rows as ORM objects cost memory and time in proportion to it.
        rows = [{"manybody_id": rec.id, **_cluster_fields(t)} for t in plan.tasks]
        for chunk in chunk_iterable(rows, READ_CHUNK):
            session.execute(insert(QCMBClusterORM), chunk)
        self._save(service_orm, driver)
        if not isinstance(plan, ScreenedPlan):  # the first iteration follows at once, most likely in this process
            remember_plan(rec.id, input_fingerprint(service_orm.service_state["driver"]["input"]), plan)

        output = f"\n\nqcmb-fractal {qcmb_fractal.__version__} many-body service ({spec.mode} mode, "
        output += f"up to {spec.max_attempts} attempts per fragment calculation)\n\n{plan.summary()}\n"
        append_output(session, rec, OutputTypeEnum.stdout, output)

    def iterate_service(self, session: Session, service_orm: ServiceQueueORM) -> bool:
        rec: QCMBManyBodyRecordORM = service_orm.record
        rec.compute_history[-1].provenance = {
            "creator": "qcmb-fractal",
            "version": qcmb_fractal.__version__,
            "routine": "qcmb_fractal.plugin.server",
        }
        return self._advance(session, service_orm)

    def advance_when_ready(self, session: Session, child_id: int) -> list[int]:
        """Queue the iteration of qcmb_manybody services whose last running child ``child_id`` just completed.

        QCFractal notices finished children only in its service loop, every ``service_frequency`` seconds, so a
        levels-mode record waits that long at every level boundary. This queues exactly the job that loop
        would queue (same unique name, same function), now; QCFractal's ``_iterate_service`` checks again that
        every child is complete, and the loop stays the fallback (a concurrent return, an errored child).
        Returns the service ids queued.
        """
        dep, child, svc_record = aliased(ServiceDependencyORM), aliased(BaseRecordORM), aliased(BaseRecordORM)
        unfinished = (
            select(dep.service_id)
            .join(child, child.id == dep.record_id)
            .where(dep.service_id == ServiceDependencyORM.service_id, child.status != RecordStatusEnum.complete)
        )
        stmt = (
            select(ServiceDependencyORM.service_id)
            .join(ServiceQueueORM, ServiceQueueORM.id == ServiceDependencyORM.service_id)
            .join(svc_record, svc_record.id == ServiceQueueORM.record_id)
            .where(ServiceDependencyORM.record_id == child_id)
            .where(svc_record.record_type == RECORD_TYPE, svc_record.status == RecordStatusEnum.running)
            .where(~unfinished.exists())
        )
        service_ids = list(session.execute(stmt).scalars())
        for service_id in service_ids:
            self.root_socket.internal_jobs.add(
                name=f"iterate_service_{service_id}",  # QCFractal's own name: never twice in the queue
                scheduled_date=now_at_utc(),
                function="services._iterate_service",
                kwargs={"service_id": service_id},
                user_id=None,
                unique_name=True,
                session=session,
            )
        return service_ids

    def handle_failed_dependencies(self, session: Session, service_orm: ServiceQueueORM) -> None:
        """QCFractal found errored children: retry them if attempts remain, else error the record with a table."""
        self._advance(session, service_orm)

    def _advance(self, session: Session, service_orm: ServiceQueueORM) -> bool:
        """One service step in a savepoint: undone as a whole if the record stops running meanwhile."""
        rec: QCMBManyBodyRecordORM = service_orm.record
        savepoint = session.begin_nested()
        try:
            finished = self._step(session, service_orm)
        except ServiceStopped as stopped:
            savepoint.rollback()
            text = f"\n[{now_at_utc():%Y-%m-%d %H:%M:%S}] {stopped}: this step was undone, no children were created\n"
            append_output(session, rec, OutputTypeEnum.stdout, text)
            return False
        savepoint.commit()
        return finished

    def _step(self, session: Session, service_orm: ServiceQueueORM) -> bool:
        rec: QCMBManyBodyRecordORM = service_orm.record
        driver = self._driver(service_orm)
        pending, retried = self._collect(session, service_orm, rec, driver)

        batch: list[FragmentTask] = []
        if not driver.finished:
            batch = driver.next_batch(limit=self.max_children_per_iteration)
        submitted = self._submit(session, service_orm, rec, driver, batch)
        # After the last child, before this step may change the record's own status (complete, error).
        self._check_running(session, rec, final=True)
        self._set_dependencies(service_orm, self._waits_for(pending, submitted, len(batch)))
        self._save(service_orm, driver)
        progress = driver.progress()  # a pass over every calculation: once per step
        text = self._progress_text(progress, len(batch), retried)
        if len(batch) == self.max_children_per_iteration and any(p.waiting for p in progress):
            text += f"(at most {len(batch)} new children per service iteration: the rest follow in later ones)\n"
        text += self._manager_note(session, service_orm, driver.plan, submitted)
        append_output(session, rec, OutputTypeEnum.stdout, text)

        if driver.complete:
            self._finalize(session, rec, driver)
            return True
        if not service_orm.dependencies:
            if not driver.failed:
                raise RuntimeError("the many-body driver neither finished nor handed out work; state is inconsistent")
            self._fail(session, service_orm, rec, driver)
        return False

    def _waits_for(
        self, pending: list[tuple[int, str]], submitted: list[tuple[int, str]], handed_out: int
    ) -> list[tuple[int, str]]:
        """The children this step's service waits for, so that it steps again while the managers still have work.

        Unfinished children of earlier batches if any (the new batch stays queued meanwhile); else, if the limit
        per iteration cut the new batch, its first half (handed out largest first, so the first to start); else
        all of it, as when the record fits in one iteration.
        """
        if pending:
            return pending
        if handed_out == self.max_children_per_iteration:
            return submitted[: max(1, len(submitted) // 2)]
        return submitted

    @staticmethod
    def _check_running(session: Session, rec: QCMBManyBodyRecordORM, *, final: bool = False) -> None:
        """Raise ServiceStopped unless the record still runs, as committed now by any other request.

        The final check also takes the record's row (NOWAIT): a cancel that holds it but has not committed
        yet stops the step too, since its list of children to cancel cannot include this step's.
        """
        stmt = select(BaseRecordORM.status).where(BaseRecordORM.id == rec.id)
        if final:
            stmt = stmt.with_for_update(nowait=True)
        try:
            status = session.execute(stmt).scalar_one()
        except OperationalError as err:
            if getattr(err.orig, "pgcode", None) != LOCK_NOT_AVAILABLE:
                raise
            raise ServiceStopped(
                "another request is changing this record (cancel, delete, new tag or priority)"
            ) from None
        if status != RecordStatusEnum.running:
            raise ServiceStopped(f"the record was {status.value} while its service step ran")

    def _manager_note(
        self, session: Session, service_orm: ServiceQueueORM, plan: Plan, submitted: list[tuple[int, str]]
    ) -> str:
        """A line per program of the new children that no active compute manager takes (QCFractal's own reason)."""
        notes, asked = [], set()
        for sp_id, key in submitted:
            program = plan.by_hash[key].program
            if program in asked:
                continue
            reason = self.root_socket.records.get_waiting_reason(sp_id, session=session)
            if reason.get("reason") == "Record is not waiting":  # found finished or running: ask another child
                continue
            asked.add(program)
            if reason.get("reason") in NO_MANAGER_REASONS:
                notes.append(
                    f"no active compute manager takes program {program} with compute tag "
                    f"'{service_orm.compute_tag}' ({waiting_reason_text(reason)}); these children wait until one does"
                )
        return "".join(f"[{now_at_utc():%Y-%m-%d %H:%M:%S}] {note}\n" for note in notes)

    def _collect(
        self, session: Session, service_orm: ServiceQueueORM, rec: QCMBManyBodyRecordORM, driver: ManyBodyDriver
    ) -> tuple[list[tuple[int, str]], list[str]]:
        """Feed finished children to the driver; returns the unfinished ones (singlepoint id, task) and retried labels.

        Read: the dependencies, and every child the driver still waits for (the service depends on the older
        batches only). Statuses come in one query per chunk, results only for the children that just finished.
        """
        watched = dict.fromkeys((d.record_id, d.extras["task"]) for d in service_orm.dependencies)
        running = set(driver.running())
        if running:
            stmt = select(QCMBClusterORM.singlepoint_id, QCMBClusterORM.task_hash).where(
                QCMBClusterORM.manybody_id == rec.id, QCMBClusterORM.singlepoint_id.is_not(None)
            )
            watched.update(dict.fromkeys((sp, key) for sp, key in session.execute(stmt) if key in running))
        status: dict[int, RecordStatusEnum] = {}
        for chunk in chunk_iterable(sorted({sp for sp, _ in watched}), READ_CHUNK):
            stmt = select(BaseRecordORM.id, BaseRecordORM.status).where(BaseRecordORM.id.in_(chunk))
            status.update(session.execute(stmt).tuples().all())
        results: dict[int, tuple[dict[str, Any] | None, str | None]] = {}
        done = sorted(sp for sp, _ in watched if status.get(sp) == RecordStatusEnum.complete)
        for chunk in chunk_iterable(done, READ_CHUNK):
            stmt = select(BaseRecordORM.id, BaseRecordORM.properties, BaseRecordORM.manager_name)
            results.update((i, (p, m)) for i, p, m in session.execute(stmt.where(BaseRecordORM.id.in_(chunk))))

        pending: list[tuple[int, str]] = []
        retried: list[str] = []
        for sp_id, key in watched:
            if status.get(sp_id) == RecordStatusEnum.complete:
                props, manager = results[sp_id]
                driver.record_result(
                    key,
                    component_properties(props or {}, _task_driver(driver, driver.plan.by_hash[key])),
                    worker=manager,
                    reference=str(sp_id),
                )
            elif status.get(sp_id) == RecordStatusEnum.error:
                child = session.get(BaseRecordORM, sp_id)
                # Failed for good before, so the record errored; it was reset since: fresh attempts.
                driver.restart_failed(key)
                error_type, error = singlepoint_error(child)
                kind = FailureKind.from_error_type(error_type)
                if driver.record_failure(key, error, kind=kind, worker=child.manager_name):
                    retried.append(driver.plan.by_hash[key].label)
            else:
                pending.append((sp_id, key))
        return pending, retried

    def _submit(
        self,
        session: Session,
        service_orm: ServiceQueueORM,
        rec: QCMBManyBodyRecordORM,
        driver: ManyBodyDriver,
        tasks: Sequence[FragmentTask],
    ) -> list[tuple[int, str]]:
        """Create (or find) the singlepoint records of ``tasks``; errored ones found again are reset to run anew."""
        if not tasks:
            return []
        builder = driver.plan.builder
        stmt = select(QCMBClusterORM).where(
            QCMBClusterORM.manybody_id == rec.id, QCMBClusterORM.task_hash.in_([t.hash for t in tasks])
        )
        clusters = {c.task_hash: c for c in session.execute(stmt).scalars()}
        for t in tasks:  # a screened plan grows: its new calculations get their cluster rows when first submitted
            if t.hash not in clusters:
                clusters[t.hash] = QCMBClusterORM(manybody_id=rec.id, **_cluster_fields(t))
                session.add(clusters[t.hash])
        by_spec: dict[str, list[FragmentTask]] = {}
        for t in tasks:
            by_spec.setdefault(builder.spec_name(t.mc), []).append(t)

        deps: list[tuple[int, str]] = []
        to_reset: list[int] = []
        for spec_name, group in by_spec.items():
            entry = builder.specifications[spec_name]
            atomic = entry["specification"]
            qc_spec = QCSpecification(
                program=entry["program"],
                driver=_task_driver(driver, group[0]),
                method=atomic["model"]["method"],
                basis=atomic["model"].get("basis"),
                keywords=atomic.get("keywords") or {},
            )
            meta, spec_id = self.root_socket.records.singlepoint.add_specification(qc_spec, session=session)
            if not meta.success:
                raise RuntimeError("cannot add singlepoint specification: " + meta.error_string)
            for chunk in chunk_iterable(group, CHILD_CHUNK):
                self._check_running(session, rec)
                molecules = [Molecule(**builder.fragment_molecule(t.real, t.basis).model_dump()) for t in chunk]
                meta, mol_ids = self.root_socket.molecules.add(molecules, session=session)
                if not meta.success:
                    raise RuntimeError("cannot add fragment molecules: " + meta.error_string)
                meta, sp_ids = self.root_socket.records.singlepoint.add_internal(
                    mol_ids,
                    spec_id,
                    service_orm.compute_tag,
                    service_orm.compute_priority,
                    rec.owner_user_id,
                    service_orm.find_existing,
                    session=session,
                )
                if not meta.success:
                    raise RuntimeError("cannot add singlepoint records: " + meta.error_string)
                for t, mol_id, sp_id in zip(chunk, mol_ids, sp_ids, strict=True):
                    clusters[t.hash].molecule_id = mol_id
                    clusters[t.hash].singlepoint_id = sp_id
                    deps.append((sp_id, t.hash))
                to_reset.extend(sp_ids[i] for i in meta.existing_idx)

        if to_reset:
            stmt = select(BaseRecordORM.id).where(
                BaseRecordORM.id.in_(to_reset), BaseRecordORM.status == RecordStatusEnum.error
            )
            errored = list(session.execute(stmt).scalars())
            if errored:
                self.root_socket.records.reset(errored, session=session)
        return deps

    @staticmethod
    def _set_dependencies(service_orm: ServiceQueueORM, wanted: list[tuple[int, str]]) -> None:
        """Make the service wait on exactly ``wanted`` (singlepoint id, task hash), keeping existing rows.

        Rows are unique per (service, record, extras) and an orphaned row is deleted only after new rows are
        inserted, so re-creating a row for the same child in one flush would violate that constraint.
        """
        existing = {(d.record_id, d.extras["task"]): d for d in service_orm.dependencies}
        service_orm.dependencies = [
            existing.get(key) or ServiceDependencyORM(record_id=key[0], extras={"task": key[1]})
            for key in dict.fromkeys(wanted)
        ]

    @staticmethod
    def _progress_text(progress: list[LevelProgress], submitted: int, retried: list[str]) -> str:
        rows = [(p.level, p.total, p.complete, p.running, p.waiting, p.error) for p in progress]
        text = f"\n[{now_at_utc():%Y-%m-%d %H:%M:%S}] submitted {submitted} fragment calculation(s)"
        if retried:
            text += f"; retrying {len(retried)} failed: {', '.join(sorted(retried))}"
        text += "\n" + tabulate.tabulate(rows, headers=["n-body", "total", "done", "running", "waiting", "errored"])
        return text + "\n"

    def _failure_table(self, rec: QCMBManyBodyRecordORM, driver: ManyBodyDriver) -> str:
        sp_ids = {c.task_hash: c.singlepoint_id for c in rec.clusters}
        rows = []
        for task, task_rec in driver.failed_records():
            err = (task_rec.error or "unknown error").strip().splitlines()
            rows.append((task.label, sp_ids.get(task.hash), task_rec.attempts, err[-1][:ERROR_WIDTH] if err else ""))
        return tabulate.tabulate(rows, headers=["cluster", "singlepoint", "attempts", "last error"])

    def _fail(
        self, session: Session, service_orm: ServiceQueueORM, rec: QCMBManyBodyRecordORM, driver: ManyBodyDriver
    ) -> None:
        """Error the record, keeping the failed children as dependencies so a reset re-runs exactly them."""
        failed = [c for c in rec.clusters if driver.record(c.task_hash).status is TaskStatus.error]
        self._set_dependencies(service_orm, [(c.singlepoint_id, c.task_hash) for c in failed if c.singlepoint_id])
        done = driver.count(TaskStatus.complete)
        message = (
            f"{len(failed)} fragment calculation(s) failed (up to {driver.state.max_attempts} attempt(s) each; "
            "input errors are not retried); "
            f"{done} finished ones are kept. Fix the cause and reset this record: only these run again.\n"
            + self._failure_table(rec, driver)
        )
        append_output(session, rec, OutputTypeEnum.stdout, "\n" + message + "\n")
        now = now_at_utc()
        upsert_output(
            session,
            rec,
            create_output_orm(OutputTypeEnum.error, {"error_type": "qcmb_fragment_failures", "error_message": message}),
        )
        rec.compute_history[-1].status = RecordStatusEnum.error
        rec.compute_history[-1].modified_on = now
        rec.status = RecordStatusEnum.error
        rec.modified_on = now

    def _finalize(self, session: Session, rec: QCMBManyBodyRecordORM, driver: ManyBodyDriver) -> None:
        result = driver.finalize()
        rec.result = result.model_dump(mode="json")
        properties = result.properties.model_dump(mode="json", exclude_none=True)
        properties["return_result"] = rec.result["return_result"]
        rec.properties = properties
        ours = {"mode": driver.state.mode, "tasks": len(driver.plan.tasks), "failed_attempts": driver.failed_attempts}
        rec.extras = {"qcmb_fractal": {**result.extras.get("qcmb_fractal", {}), **ours}}
        append_output(session, rec, OutputTypeEnum.stdout, "\n" + (result.stdout or "") + "\n")

    ############################################
    # Add / get / query
    ############################################

    def add(
        self,
        initial_molecules: Sequence[int | Molecule],
        spec: QCMBSpecification,
        compute_tag: str,
        compute_priority: PriorityEnum,
        creator_user: int | str | None,
        find_existing: bool,
        *,
        names: Sequence[str] | None = None,
        session: Session | None = None,
    ) -> tuple[InsertMetadata, list[int | None]]:
        """Add records after checking every molecule with the specification (InputError → HTTP 400).

        ``names`` say what each molecule is in a refusal (a dataset names the entry and specification).
        """
        compute_tag = compute_tag.lower()
        spec_hash = specification_hash(spec)
        with self.root_socket.optional_session(session, False) as session:
            creator_user_id = self.root_socket.users.get_optional_user_id(creator_user, session=session)
            mol_meta, mol_ids = self.root_socket.molecules.add_mixed(initial_molecules, session=session)
            if not mol_meta.success:
                error = "Aborted - could not add molecules: " + mol_meta.error_string
                return InsertMetadata(error_description=error), []
            for i, mol_id in enumerate(mol_ids):
                mol = session.get(MoleculeORM, mol_id).to_model(Molecule)
                try:
                    validated_plan(mol, spec, self.max_children)
                except InputError as err:
                    what = names[i] if names else f"molecule {i}"
                    raise UserReportableError(f"{what} (id {mol_id}): {err}") from None

            all_orm = []
            for mol_id in mol_ids:
                orm = QCMBManyBodyRecordORM(
                    is_service=True,
                    specification=spec.model_dump(mode="json"),
                    specification_hash=spec_hash,
                    initial_molecule_id=mol_id,
                    status=RecordStatusEnum.waiting,
                    owner_user_id=creator_user_id,
                    creator_user_id=creator_user_id,
                )
                self.create_service(orm, compute_tag, compute_priority, find_existing)
                all_orm.append(orm)

            if find_existing:
                meta, ids = insert_general(
                    session,
                    all_orm,
                    (QCMBManyBodyRecordORM.specification_hash, QCMBManyBodyRecordORM.initial_molecule_id),
                    (QCMBManyBodyRecordORM.id,),
                    use_unique=False,
                    lock_id=QCMB_INSERT_LOCK_ID,
                )
                return meta, [x[0] for x in ids]
            session.add_all(all_orm)
            session.flush()
            return InsertMetadata(inserted_idx=list(range(len(all_orm)))), [x.id for x in all_orm]

    def add_from_input(
        self,
        record_input: QCMBInput,
        compute_tag: str,
        compute_priority: PriorityEnum,
        creator_user: int | str | None,
        find_existing: bool,
        *,
        session: Session | None = None,
    ) -> tuple[InsertCountsMetadata, int]:
        meta, ids = self.add(
            [record_input.initial_molecule],
            record_input.specification,
            compute_tag,
            compute_priority,
            creator_user,
            find_existing,
            session=session,
        )
        return InsertCountsMetadata.from_insert_metadata(meta), ids[0]

    def get(
        self,
        record_ids: Sequence[int],
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        missing_ok: bool = False,
        *,
        session: Session | None = None,
    ) -> list[dict[str, Any] | None]:
        options = []
        if include:
            if is_included("initial_molecule", include, exclude, False):
                options.append(joinedload(QCMBManyBodyRecordORM.initial_molecule))
            if is_included("clusters", include, exclude, False):
                options.append(selectinload(QCMBManyBodyRecordORM.clusters))
            if is_included("result", include, exclude, False):
                options.append(undefer(QCMBManyBodyRecordORM.result))
        with self.root_socket.optional_session(session, True) as session:
            return self.root_socket.records.get_base(
                orm_type=self.record_orm,
                record_ids=record_ids,
                include=include,
                exclude=exclude,
                missing_ok=missing_ok,
                additional_options=options,
                session=session,
            )

    def query(self, query_data: QCMBQueryFilters, *, session: Session | None = None) -> list[int]:
        and_query = []
        if query_data.initial_molecule_id is not None:
            and_query.append(QCMBManyBodyRecordORM.initial_molecule_id.in_(query_data.initial_molecule_id))
        if query_data.mode is not None:
            and_query.append(QCMBManyBodyRecordORM.specification["mode"].astext.in_(query_data.mode))
        stmt = select(QCMBManyBodyRecordORM.id).where(*and_query)
        return self.root_socket.records.query_base(
            stmt=stmt, orm_type=QCMBManyBodyRecordORM, query_data=query_data, session=session
        )

    def _get_orm(self, session: Session, record_id: int, *options) -> QCMBManyBodyRecordORM:
        rec = session.get(QCMBManyBodyRecordORM, record_id, options=list(options))
        if rec is None:
            raise MissingDataError(f"Cannot find {RECORD_TYPE} record {record_id}")
        return rec

    def get_clusters(self, record_id: int, *, session: Session | None = None) -> list[dict[str, Any]]:
        with self.root_socket.optional_session(session, True) as session:
            rec = self._get_orm(session, record_id, selectinload(QCMBManyBodyRecordORM.clusters))
            return [c.model_dict() for c in rec.clusters]

    def get_result(self, record_id: int, *, session: Session | None = None) -> dict[str, Any] | None:
        with self.root_socket.optional_session(session, True) as session:
            return self._get_orm(session, record_id, undefer(QCMBManyBodyRecordORM.result)).result

    def get_level_status(self, record_id: int, *, session: Session | None = None) -> list[dict[str, Any]]:
        """Per n-body level: children done, running, waiting (incl. not yet created) and errored.

        A level with waiting children also says why they wait, in QCFractal's words for one of them (e.g.
        "No active managers"), so a record nobody can compute does not just wait in silence.
        """
        stmt = (
            select(QCMBClusterORM.level, BaseRecordORM.status, func.count(), func.min(BaseRecordORM.id))
            .outerjoin(BaseRecordORM, BaseRecordORM.id == QCMBClusterORM.singlepoint_id)
            .where(QCMBClusterORM.manybody_id == record_id)
            .group_by(QCMBClusterORM.level, BaseRecordORM.status)
        )
        with self.root_socket.optional_session(session, True) as session:
            self._get_orm(session, record_id)
            levels: dict[int, dict[str, Any]] = {}
            for level, status, count, first_child in session.execute(stmt).all():
                row = levels.setdefault(level, {"level": level, "total": 0})
                key = {
                    None: "waiting",
                    RecordStatusEnum.waiting: "waiting",
                    RecordStatusEnum.running: "running",
                    RecordStatusEnum.complete: "complete",
                }.get(status, "error")
                row[key] = row.get(key, 0) + count
                row["total"] += count
                if status == RecordStatusEnum.waiting:
                    reason = self.root_socket.records.get_waiting_reason(first_child, session=session)
                    row["waiting_reason"] = waiting_reason_text(reason)
            return [levels[k] for k in sorted(levels)]
