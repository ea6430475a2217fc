"""Drive the expansion from this process against any QCFractal server, through QCPortal only.

The server needs no plugin: each fragment calculation is a plain singlepoint record. QCFractal
deduplicates singlepoints on add (same molecule, same specification -> same record id), so a rerun or a
second machine that submits the same plan gets the records already there, finished ones included,
instead of computing them again. The server is the checkpoint; the local checkpoint only saves the
round trips.

One I/O thread owns the PortalClient (it is not thread-safe): it submits queued tasks in one
``add_singlepoints`` call per specification, polls the unfinished records in batches, and resolves
the runner's futures. Retries are the driver's decision (it counts attempts); when it hands back a
task whose record errored, the thread resets that record on the server instead of adding a new one.
"""

import argparse
import getpass
import logging
import os
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, SecretStr
from qcelemental.models.v2 import AtomicInput, AtomicProperties, AtomicResult, Provenance

from qcmb_fractal.drive.state import ComponentProperties, FailureKind
from qcmb_fractal.errors import InputError
from qcmb_fractal.execute.base import Backend, TaskOutcome
from qcmb_fractal.plan import FragmentTask, Plan

logger = logging.getLogger(__name__)

PRIORITIES = ("low", "normal", "high")
FINISHED = ("complete", "error", "cancelled", "invalid", "deleted")
PASSWORD_ENV = "QCPORTAL_PASSWORD"
API_TOKEN_ENV = "QCPORTAL_API_TOKEN"
FASTEST_POLL = 1.0  # seconds; a shared server answers every poll with one query per 1000 unfinished records


class Connection(BaseModel):
    """How to reach the server; secrets stay out of reprs and logs.

    Either ``address`` (with optional credentials) or ``config_file`` (QCPortal's own
    ``qcportal_config.yaml``, optionally naming one ``server`` entry in it) is set.
    """

    address: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    api_token: SecretStr | None = None
    verify: bool = True
    config_file: str | None = None
    server: str | None = None

    def describe(self) -> str:
        where = self.address or f"{self.server or 'the server'} in {self.config_file}"
        return f"{where}" + (f" as {self.username}" if self.username else "")

    def connect(self) -> Any:
        """A connected PortalClient; a refused login or an unreachable server becomes an InputError."""
        from qcportal import PortalClient
        from qcportal.client_base import PortalRequestError
        from qcportal.exceptions import AuthenticationFailure, AuthorizationFailure

        try:
            if self.config_file is not None:
                return PortalClient.from_file(self.server, self.config_file)
            return PortalClient(
                self.address or "",
                username=self.username,
                password=self.password.get_secret_value() if self.password else None,
                api_token=self.api_token.get_secret_value() if self.api_token else None,
                verify=self.verify,
                show_motd=False,
            )
        except (AuthenticationFailure, AuthorizationFailure, PortalRequestError) as err:
            if isinstance(err, PortalRequestError) and err.status_code not in (401, 403):
                raise InputError(f"the QCFractal server {self.describe()} answered: {err}") from None
            raise InputError(
                f"the QCFractal server {self.describe()} refused the login: {err}. Check the user name and the "
                f"password in ${PASSWORD_ENV} (or ${API_TOKEN_ENV}, or the entry in qcportal_config.yaml)."
            ) from None
        except (OSError, KeyError, RuntimeError, ValueError) as err:  # unreachable (ConnectionRefusedError), bad file
            raise InputError(f"cannot connect to the QCFractal server {self.describe()}: {err}") from None


def find_config_file(path: str | None) -> str | None:
    """QCPortal's search order for ``qcportal_config.yaml``: the given path, the working directory, ~/.qca."""
    if path is not None:
        path = os.path.expanduser(path)
        if os.path.isdir(path):
            path = os.path.join(path, "qcportal_config.yaml")
        if not os.path.exists(path):
            raise InputError(f"QCPortal configuration file {path} does not exist.")
        return path
    for folder in (os.getcwd(), os.path.join(os.path.expanduser("~"), ".qca")):
        candidate = os.path.join(folder, "qcportal_config.yaml")
        if os.path.exists(candidate):
            return candidate
    return None


def config_entries(path: str) -> set[str]:
    """Names of the servers a ``qcportal_config.yaml`` lists (it may also hold just one, at the top)."""
    import yaml

    with open(path) as handle:
        data = yaml.safe_load(handle) or {}
    return {k for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else set()


def connection_from_options(
    server: str | None,
    *,
    username: str | None = None,
    config_file: str | None = None,
    verify: bool = True,
    environ: dict[str, str] | None = None,
    interactive: bool | None = None,
) -> Connection:
    """Resolve the server and credentials the way QCPortal users expect, never from the command line.

    ``server`` is an address (``https://host:7777``, ``host:7777``) or the name of an entry in
    ``qcportal_config.yaml``; without it, the file's top-level address or ``QCPORTAL_ADDRESS`` is used.
    The password comes from ``QCPORTAL_PASSWORD`` or, on a terminal, a prompt; ``QCPORTAL_API_TOKEN``
    replaces both.
    """
    env = os.environ if environ is None else environ
    if server is None or "://" not in server:
        found = find_config_file(config_file)
        use_file = found is not None and (
            server in config_entries(found) if server is not None else "QCPORTAL_ADDRESS" not in env
        )
        if use_file:
            if username is not None:
                raise InputError("--username goes with a server address; put it in the qcportal_config.yaml entry.")
            return Connection(config_file=found, server=server)
        server = server or env.get("QCPORTAL_ADDRESS")
        if server is None:
            raise InputError(
                "the qcportal backend needs a server: give --server URL, set QCPORTAL_ADDRESS, or write a "
                "qcportal_config.yaml (working directory or ~/.qca)."
            )
    username = username or env.get("QCPORTAL_USERNAME")
    api_token = env.get(API_TOKEN_ENV)
    password = env.get(PASSWORD_ENV)
    if api_token is not None and username is not None:
        raise InputError(f"give either ${API_TOKEN_ENV} or a user name with ${PASSWORD_ENV}, not both.")
    if username is not None and password is None:
        if interactive is None:
            interactive = sys.stdin.isatty()
        if not interactive:
            raise InputError(f"user {username!r} needs a password: set ${PASSWORD_ENV} (or run on a terminal).")
        password = getpass.getpass(f"QCFractal password for {username} at {server}: ")
    return Connection(
        address=server,
        username=username,
        password=SecretStr(password) if password is not None else None,
        api_token=SecretStr(api_token) if api_token is not None else None,
        verify=verify and env.get("QCPORTAL_VERIFY", "true").lower() not in ("0", "false", "no"),
    )


def _is_transient(exc: BaseException) -> bool:
    """Worth retrying later: the server is down or overloaded, not refusing what we sent."""
    import requests
    from qcportal.client_base import AllowedConnectionExceptions

    # A server killed mid-response breaks the body (ChunkedEncodingError): PortalClient does not retry that
    if isinstance(exc, (*AllowedConnectionExceptions, requests.exceptions.ChunkedEncodingError)):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and status >= 500


@dataclass
class _Submission:
    """A task handed to the backend, and the future the runner waits on."""

    task: FragmentTask
    future: Future


def record_to_result(record: Any, atomic: AtomicInput, program: str) -> AtomicResult:
    """Rebuild the AtomicResult a local run would give from a complete singlepoint record.

    QCFractal stores ``return_result`` and the qcvars (lower-cased) together with the properties; the
    properties go back where QCEngine put them, the rest into extras. The molecule and input are the
    plan's own, so the result is exactly what the local backend would checkpoint.
    """
    stored = dict(record.properties or {})
    return_result = stored.pop("return_result", None)
    known = set(AtomicProperties.model_fields) - {"schema_name"}
    properties = {k: v for k, v in stored.items() if k in known and v is not None}
    if "return_gradient" in properties or "return_hessian" in properties:  # arrays are validated against it
        properties.setdefault("calcinfo_natom", len(atomic.molecule.symbols))
    extra = {k: v for k, v in stored.items() if k not in known}
    history = record.compute_history_[-1] if record.compute_history_ else None
    prov = history.provenance if history is not None and history.provenance is not None else None
    provenance = (
        Provenance(creator=prov.creator, version=prov.version or "", routine=prov.routine or "")
        if prov is not None
        else Provenance(creator="QCFractal", version="", routine="")
    )
    spec = atomic.specification.model_copy(update={"program": program})
    return AtomicResult(
        input_data=atomic.model_copy(update={"specification": spec}),
        molecule=atomic.molecule,
        properties=AtomicProperties(**properties),
        return_result=return_result,
        success=True,
        provenance=provenance,
        extras={**record.extras, "qcfractal_record_id": record.id, "extra_properties": extra},
    )


class QCPortalBackend(Backend):
    name = "qcportal"
    summary = "Plain singlepoint records on any QCFractal server; its compute managers run them."

    def __init__(
        self,
        connection: Connection | None = None,
        *,
        client: Any = None,
        tag: str = "*",
        priority: str = "normal",
        poll_interval: float = 10.0,
        server_timeout: float = 600.0,
    ) -> None:
        if connection is None and client is None:
            raise InputError("the qcportal backend needs a server connection (--server URL).")
        if priority not in PRIORITIES:
            raise InputError(f"--priority must be one of {', '.join(PRIORITIES)}, not {priority!r}.")
        if poll_interval <= 0:
            raise InputError("--poll-interval must be a positive number of seconds.")
        self.connection = connection
        self.client = client
        self.tag = tag
        self.priority = priority
        self.poll_interval = poll_interval
        self.server_timeout = server_timeout
        self.plan: Plan | None = None
        self.inserted = 0
        self.existing = 0
        self.resets = 0
        self._queue: list[_Submission] = []
        self._pending: dict[int, list[_Submission]] = defaultdict(list)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._where = "?"

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--server",
            help="QCFractal server URL, or the name of an entry in qcportal_config.yaml "
            "(default: $QCPORTAL_ADDRESS or the file's address)",
        )
        group.add_argument(
            "--username", help=f"user on the server; the password comes from ${PASSWORD_ENV} or a prompt"
        )
        group.add_argument("--qcportal-config", help="a qcportal_config.yaml (default: ./ then ~/.qca/)")
        group.add_argument("--no-verify-ssl", action="store_true", help="accept a self-signed server certificate")
        group.add_argument("--tag", help="compute tag routing the calculations to managers (default: *)")
        group.add_argument("--priority", choices=PRIORITIES, help="compute priority on the server (default: normal)")
        group.add_argument(
            "--poll-interval", type=float, help="longest wait in seconds between status polls (default: 10)"
        )

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> "QCPortalBackend":
        connection = connection_from_options(
            getattr(args, "server", None),
            username=getattr(args, "username", None),
            config_file=getattr(args, "qcportal_config", None),
            verify=not getattr(args, "no_verify_ssl", False),
        )
        return cls(
            connection,
            tag=getattr(args, "tag", None) or "*",
            priority=getattr(args, "priority", None) or "normal",
            poll_interval=getattr(args, "poll_interval", None) or 10.0,
        )

    def start(self, plan: Plan) -> None:
        self.plan = plan
        if self.client is None:
            assert self.connection is not None
            self.client = self.connection.connect()
        self._where = self.client.address.rstrip("/")
        logger.info("qcportal[%s]: tag %r, priority %s", self._where, self.tag, self.priority)
        self._warn_without_managers({t.program for t in plan.tasks})
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="qcportal-io", daemon=True)
        self._thread.start()

    def _warn_without_managers(self, programs: set[str]) -> None:
        """Nothing fails when no manager serves a program: the records just wait, so say so up front."""
        try:
            managers = list(self.client.query_managers(status="active"))
        except Exception as err:  # listing managers may be forbidden to ordinary users
            logger.debug("qcportal[%s]: cannot list compute managers: %s", self._where, err)
            return
        for program in sorted(programs):
            serving = [
                m for m in managers if program in m.programs and ("*" in m.compute_tags or self.tag in m.compute_tags)
            ]
            if not serving:
                logger.warning(
                    "qcportal[%s]: no active compute manager runs %s for tag %r; the calculations wait until one does",
                    self._where,
                    program,
                    self.tag,
                )

    def submit(self, task: FragmentTask) -> Future:
        return self.submit_many([task])[0]

    def submit_many(self, tasks: list[FragmentTask]) -> list[Future]:
        """Queue tasks for the I/O thread, which sends each specification's batch in one request."""
        if self._thread is None:
            raise RuntimeError("QCPortalBackend.start() must run before submit()")
        subs = [_Submission(t, Future()) for t in tasks]
        if subs:
            with self._lock:
                self._queue.extend(subs)
            self._wake.set()
        return [s.future for s in subs]

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop talking to the server; submitted records stay there and a rerun collects them."""
        if self._thread is not None:
            self._stop.set()
            self._wake.set()
            # On Ctrl-C do not sit out a request to a slow server: the (daemon) thread ends with the process
            self._thread.join(timeout=None if wait and not cancel_futures else 5.0)
            self._thread = None
        left = len(self._pending)
        for subs in [*list(self._pending.values()), list(self._queue)]:
            for s in subs:
                s.future.cancel()
        if self.plan is not None:
            logger.info(
                "qcportal[%s]: %d singlepoints submitted, %d found already on the server, %d reset after errors%s",
                self._where,
                self.inserted,
                self.existing,
                self.resets,
                f"; {left} unfinished keep running there and a rerun collects them" if left else "",
            )

    # ---- the I/O thread -------------------------------------------------------------------------

    def _loop(self) -> None:
        fastest = min(FASTEST_POLL, self.poll_interval)
        interval = fastest
        last_ok = time.monotonic()
        while not self._stop.is_set():
            self._wake.clear()  # before the work, so a submit during it is not missed
            try:
                submitted = self._submit_queued()
                resolved = self._poll()
                last_ok = time.monotonic()
            except Exception as exc:
                if not _is_transient(exc) or time.monotonic() - last_ok > self.server_timeout:
                    logger.error("qcportal[%s]: %s", self._where, exc)
                    self._fail_all(f"QCFractal server {self._where} failed: {type(exc).__name__}: {exc}")
                    last_ok = time.monotonic()
                else:  # a 5xx is a reachable server that cannot answer yet (e.g. its database is away)
                    logger.warning(
                        "qcportal[%s]: server unavailable, will retry for up to %.0f s more: %s",
                        self._where,
                        self.server_timeout - (time.monotonic() - last_ok),
                        str(exc).strip(),
                    )
                submitted = resolved = 0
            # Poll often while records change, back off to poll_interval while long calculations run
            interval = fastest if submitted or resolved else min(interval * 2, self.poll_interval)
            self._wake.wait(interval)

    def _fail_all(self, message: str) -> None:
        with self._lock:
            queued, self._queue = self._queue, []
        subs = queued + [s for group in self._pending.values() for s in group]
        self._pending.clear()
        for s in subs:
            self._resolve(s, TaskOutcome.failure(s.task.hash, FailureKind.crash, message, worker=self._where))

    @staticmethod
    def _resolve(sub: _Submission, outcome: TaskOutcome) -> None:
        if not sub.future.done():  # the runner may have cancelled it
            sub.future.set_result(outcome)

    def _submit_queued(self) -> int:
        with self._lock:
            queued, self._queue = self._queue, []
        if not queued:
            return 0
        assert self.plan is not None
        groups: dict[str, list[tuple[_Submission, AtomicInput]]] = defaultdict(list)
        for s in queued:
            groups[s.task.mc].append((s, self.plan.atomic_input(s.task)))
        limit = int(self.client.api_limits.get("add_records", 500))
        batches = [group[i : i + limit] for group in groups.values() for i in range(0, len(group), limit)]
        for n, batch in enumerate(batches):
            try:
                self._add_batch(batch)
            except Exception:
                with self._lock:  # not sent (or not known to be): send again next round, the server dedups
                    self._queue[:0] = [s for b in batches[n:] for s, _ in b]
                raise
        return len(queued)

    def _add_batch(self, batch: list[tuple[_Submission, AtomicInput]]) -> None:
        from qcportal.molecules import Molecule as PortalMolecule

        task = batch[0][0].task
        spec = batch[0][1].specification
        molecules = [PortalMolecule(**atomic.molecule.convert_v(1).model_dump()) for _, atomic in batch]
        meta, ids = self.client.add_singlepoints(
            molecules,
            program=task.program,
            driver=spec.driver.value,
            method=spec.model.method,
            basis=spec.model.basis,
            keywords=dict(spec.keywords),
            protocols=spec.protocols.model_dump(mode="json", exclude={"schema_name"}),
            compute_tag=self.tag,
            compute_priority=self.priority,
        )
        refused = {idx: msg for idx, msg in meta.errors}
        if not ids:  # the whole batch was refused, e.g. a specification the server does not accept
            refused = dict.fromkeys(range(len(batch)), meta.error_string)
            ids = [None] * len(batch)
        # Revive first: if that fails, the batch is sent again next round and the server dedups it
        self._revive([ids[i] for i in meta.existing_idx])
        self.inserted += len(meta.inserted_idx)
        self.existing += len(meta.existing_idx)
        for idx, ((sub, _), rid) in enumerate(zip(batch, ids, strict=True)):
            if rid is None or idx in refused:
                error = f"the server refused this singlepoint: {refused.get(idx)}"
                outcome = TaskOutcome.failure(sub.task.hash, FailureKind.input_error, error, worker=self._where)
                self._resolve(sub, outcome)
            else:
                self._pending[rid].append(sub)
        new = len(meta.inserted_idx)
        logger.debug("qcportal[%s]: %d %s singlepoints sent, %d new", self._where, len(ids), task.program, new)

    def _revive(self, record_ids: list[int]) -> None:
        """Records from an earlier attempt or run that failed: the driver asked for another try, so reset them."""
        if not record_ids:
            return
        status: dict[str, list[int]] = defaultdict(list)
        limit = int(self.client.api_limits.get("get_records", 1000))
        for start in range(0, len(record_ids), limit):
            for rec in self.client.get_records(record_ids[start : start + limit], include=["status"]):
                status[rec.status.value].append(rec.id)
        # Undeleting restores the status a record had before it was deleted
        if status["deleted"] and self._modify(self.client.undelete_records, status["deleted"], "undelete"):
            for rec in self.client.get_records(status["deleted"], include=["status"]):
                status[rec.status.value].append(rec.id)
        if status["cancelled"]:  # uncancelling puts a record back to waiting
            self._modify(self.client.uncancel_records, status["cancelled"], "uncancel")
        if status["error"] and self._modify(self.client.reset_records, status["error"], "reset"):
            self.resets += len(status["error"])
            logger.info(
                "qcportal[%s]: reset %d errored records for another attempt: %s",
                self._where,
                len(status["error"]),
                ", ".join(map(str, status["error"][:10])) + (" ..." if len(status["error"]) > 10 else ""),
            )

    def _modify(self, action: Any, record_ids: list[int], what: str) -> bool:
        """Change records that may belong to someone else (the server dedups across users): refusal is no crash.

        A record left as it was reports its state at the next poll and counts as a failed attempt.
        """
        try:
            action(record_ids)
        except Exception as exc:
            if _is_transient(exc):
                raise
            logger.warning("qcportal[%s]: cannot %s records %s: %s", self._where, what, record_ids[:10], exc)
            return False
        return True

    def _poll(self) -> int:
        """Collect every record that finished since the last poll; returns how many."""
        if not self._pending:
            return 0
        ids = list(self._pending)
        limit = int(self.client.api_limits.get("get_records", 1000))
        done = 0
        for start in range(0, len(ids), limit):
            records = self.client.query_records(
                record_id=ids[start : start + limit], status=list(FINISHED), include=["compute_history"]
            )
            for record in records:
                for sub in self._pending.pop(record.id, []):
                    self._resolve(sub, self._outcome(sub.task, record))
                    done += 1
        return done

    def _outcome(self, task: FragmentTask, record: Any) -> TaskOutcome:
        assert self.plan is not None
        worker = record.manager_name or self._where
        status = record.status.value
        history = record.compute_history_[-1] if record.compute_history_ else None
        wall = getattr(history.provenance, "wall_time", None) if history and history.provenance else None
        common: dict[str, Any] = {
            "hash": task.hash,
            "worker": worker,
            "wall_time": float(wall or 0.0),
            "reference": str(record.id),
        }
        if status != "complete":
            return TaskOutcome(success=False, kind=self._failure_kind(record), error=self._error_text(record), **common)
        try:
            result = record_to_result(record, self.plan.atomic_input(task), task.program)
            properties = ComponentProperties.from_atomic_result(result)
        except Exception as exc:  # malformed record: a failed attempt, not a dead I/O thread
            error = f"record {record.id} unreadable: {exc}"
            return TaskOutcome(success=False, kind=FailureKind.program_error, error=error, **common)
        return TaskOutcome(success=True, properties=properties, result=result, **common)

    @staticmethod
    def _failure_kind(record: Any) -> FailureKind:
        """An errored record's kind from its error_type; cancelled or deleted on the server, it was lost."""
        if record.status.value != "error":
            return FailureKind.crash
        try:
            return FailureKind.from_error_type((record.error or {}).get("error_type"))
        except Exception:  # the error text is fetched on demand and may be unavailable
            return FailureKind.program_error

    def _error_text(self, record: Any) -> str:
        status = record.status.value
        if status != "error":
            return f"singlepoint record {record.id} is {status} on the server"
        try:
            err = record.error or {}
        except Exception as exc:
            return f"singlepoint record {record.id} errored (error text unavailable: {exc})"
        return f"{err.get('error_type', 'error')}: {err.get('error_message', '')} (record {record.id})".strip()
