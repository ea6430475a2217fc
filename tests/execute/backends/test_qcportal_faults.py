"""Server-side faults under the QCPortal backend: real ``qcfractal-server start``, real compute managers, xtb.

Each test runs the multi-process server (API and job-runner processes, as an operator runs it) and
``qcfractal-compute-manager`` as separate process groups on its own PostgreSQL database, so a fault
can take down exactly one of them with SIGKILL; the client runs in this process, in a thread, as the
CLI runs it. The server's heartbeat settings are lowered so a dead manager is noticed in seconds.
"""

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import psycopg2
import pytest
import yaml
from psycopg2 import sql

from qcmb_fractal.errors import InputError, RunFailed
from qcmb_fractal.execute import Runner
from qcmb_fractal.execute.backends.qcportal import QCPortalBackend, connection_from_options
from qcmb_fractal.plan import Plan
from qcmb_fractal.testing.fractal import (
    PG_HOST,
    PG_PASSWORD,
    PG_PORT,
    PG_ROLE,
    PG_SUPERUSER,
    fresh_database,
)
from qcmb_fractal.testing.molecules import water_cluster
from qcmb_fractal.testing.programs import needs_xtb
from qcmb_fractal.testing.reference import XTB_GFN2, assert_same_result, mbe_input, serial_reference
from qcmb_fractal.testing.servers import (
    HEARTBEAT_MAX_MISSED,
    OUTAGE_TOLERANT_MAX_MISSED,
    READER,
    READER_PASSWORD,
    SUBMITTER,
    SUBMITTER_PASSWORD,
    Manager,
    Server,
    assert_no_temporary_files,
    running,
    wait_until,
)

pytestmark = needs_xtb

XTB = {"xtb": XTB_GFN2}
DATABASE = "qcmb_srvfault_qcportal"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """One secured server for the module; the tests differ in specification, so none reuses another's records."""
    fresh_database(DATABASE, plugin=False)
    with running(Server(tmp_path_factory.mktemp("srvfault") / "server", DATABASE)) as srv:
        yield srv


@pytest.fixture
def managers(server: Server) -> Iterator[Callable[[str], "Manager"]]:
    """Start compute managers by name; every one still running is shut down after the test."""
    started: list[Manager] = []

    def start(name: str) -> Manager:
        manager = Manager(server.root.parent / "managers", server, f"qcmb-srvfault-{name}")
        started.append(manager)
        manager.start()
        return manager

    try:
        yield start
    finally:
        for manager in started:
            manager.stop()


class BackgroundRun:
    """The client's run in a thread, as the CLI runs it, so the test can break things meanwhile."""

    def __init__(self, plan: Plan, server: Server, **options) -> None:
        connection = connection_from_options(
            server.uri, username=SUBMITTER, environ={"QCPORTAL_PASSWORD": SUBMITTER_PASSWORD}
        )
        self.backend = QCPortalBackend(connection, poll_interval=1.0, server_timeout=120.0)
        self.runner = Runner(plan, self.backend, progress=False, mode="levels", **options)
        self.result = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="client", daemon=True)

    def _run(self) -> None:
        try:
            with self.backend:
                self.result = self.runner.run()
        except BaseException as exc:
            self.error = exc

    def start(self) -> "BackgroundRun":
        self.thread.start()
        return self

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the client did not finish"
        if self.error is not None:
            raise self.error


def records(server: Server, plan: Plan) -> list:
    """The plan's singlepoints on the server (each test has its own specification)."""
    spec = plan.atomic_input(plan.tasks[0]).specification
    return list(
        server.admin().query_singlepoints(
            program="xtb", method=spec.model.method, driver=spec.driver.value, include=["compute_history"]
        )
    )


def by_status(server: Server, plan: Plan) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for record in records(server, plan):
        out.setdefault(record.status.value, set()).add(record.id)
    return out


def assert_computed_once_and_same_numbers(run: BackgroundRun, server: Server, plan: Plan, inp) -> list:
    assert_same_result(run.result, serial_reference(inp))
    assert all(t.attempts == 0 for t in run.runner.driver.state.tasks.values())  # no attempt was spent either
    found = records(server, plan)
    assert len(found) == len(plan.tasks)
    for record in found:
        assert record.status.value == "complete"
        assert len(record.compute_history) == 1, f"record {record.id} was computed more than once"
    return found


def dimer(method: str, driver: str = "energy"):
    inp = mbe_input(water_cluster(2), {"xtb": ("xtb", method, None)}, {2: "xtb"}, bsse=["nocp"], driver=driver)
    return inp, Plan(inp)


@pytest.mark.slow
def test_manager_killed_mid_task_hands_its_tasks_to_a_new_manager(server, managers):
    inp, plan = dimer("gfn2-xtb")
    server.reconfigure(HEARTBEAT_MAX_MISSED)
    first = managers("first")
    run = BackgroundRun(plan, server).start()

    # Levels mode: the monomers are complete when the manager claims the dimer; kill it holding that
    def monomers_done_dimer_claimed() -> bool:
        status = by_status(server, plan)
        return len(status.get("complete", ())) == 2 and "running" in status

    wait_until(monomers_done_dimer_claimed, 120, "the manager to claim the dimer", first.log)
    first.kill()
    before = by_status(server, plan)
    finished, held = before.get("complete", set()), before.get("running", set())
    assert len(held) == 1

    # The server's heartbeat check declares it dead and hands its tasks back to the queue
    wait_until(lambda: "running" not in by_status(server, plan), 60, "the task to be handed back", server.log)
    assert first.registered().status.value == "inactive"
    second = managers("second")
    run.join(300)

    for record in assert_computed_once_and_same_numbers(run, server, plan, inp):
        by = first if record.id in finished else second
        assert record.compute_history[0].manager_name == by.registered().name
    second.stop()
    assert_no_temporary_files(server, second)


@pytest.mark.slow
def test_server_killed_and_restarted_mid_run(server, managers, caplog):
    inp, plan = dimer("gfn2-xtb", driver="gradient")
    server.reconfigure(OUTAGE_TOLERANT_MAX_MISSED)  # so the manager waits for the server as the client does
    manager = managers("through-restart")
    run = BackgroundRun(plan, server).start()
    wait_until(lambda: "complete" in by_status(server, plan), 120, "a first result", manager.log)
    server.kill()  # API and job runner at once, mid-run
    time.sleep(20)  # longer than PortalClient retries a request on its own
    assert run.thread.is_alive()
    server.start()
    run.join(300)

    assert_computed_once_and_same_numbers(run, server, plan, inp)
    assert any("server unavailable, will retry for up to" in r.getMessage() for r in caplog.records)
    assert manager.proc is not None and manager.proc.poll() is None, "the manager should ride out the restart too"
    manager.stop()
    assert_no_temporary_files(server, manager)


def superuser():
    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_SUPERUSER, dbname="postgres")
    conn.autocommit = True
    return conn


@pytest.mark.slow
def test_database_connections_dropped_and_refused_then_restored(server, managers, caplog):
    """QCFractal's API answers 500 while the database is away, but its other processes do not survive it.

    The job runner dies on the dropped connection and ``qcfractal-server start`` exits with it ("A Job
    runner died!"); a compute manager that gets a 500 while returning results dies too (an uncaught
    PortalRequestError), losing that result. So production servers and managers need a supervisor
    (systemd ``Restart=always``, a container restart policy); the test plays that supervisor. The client
    must ride out the 500s and the restart, and the lost result is computed again once, by the new manager.
    """
    inp, plan = dimer("gfn1-xtb")
    server.reconfigure(HEARTBEAT_MAX_MISSED)  # a dead manager's task comes back quickly
    manager = managers("through-db-outage")
    run = BackgroundRun(plan, server).start()
    wait_until(lambda: "complete" in by_status(server, plan), 120, "a first result", manager.log)
    name = sql.Identifier(server.database)
    terminate = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s"
    with contextlib.closing(superuser()) as conn, conn.cursor() as cur:
        try:  # only this module's database: other users of the machine's PostgreSQL see nothing
            cur.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(name))
            cur.execute(terminate, (server.database,))
            time.sleep(4)
            cur.execute(terminate, (server.database,))
        finally:
            cur.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(name))

    assert server.proc is not None
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.proc.wait(timeout=45)
    if server.proc.poll() is not None:  # the supervisor's part
        assert "A Job runner died" in server.log()
        server.start()
    assert manager.proc is not None
    if manager.proc.poll() is not None:
        manager = managers("after-db-outage")
    run.join(300)

    assert_computed_once_and_same_numbers(run, server, plan, inp)
    refused = [r.getMessage() for r in caplog.records if "will retry" in r.getMessage()]
    assert any("HTTP status 500" in m for m in refused), refused
    assert not [m for m in refused if server.database in m or "Traceback" in m], refused
    manager.stop()
    assert_no_temporary_files(server, manager)


# ---- what a refused client is told -------------------------------------------------------------------------------


def secrets_of(server: Server) -> list[str]:
    config = yaml.safe_load(server.config.read_text())
    return [
        str(server.root),
        server.database,
        f"{PG_ROLE}:{PG_PASSWORD}@",
        config["api"]["secret_key"],
        config["api"]["jwt_secret_key"],
        "Traceback",
        "site-packages",
    ]


def test_failed_login_says_so_without_leaking(server):
    for user, password in [(SUBMITTER, "wrong-password"), ("nobody", "wrong-password"), (None, None)]:
        env = {"QCPORTAL_PASSWORD": password} if password else {}
        with pytest.raises(InputError) as refused:
            connection_from_options(server.uri, username=user, environ=env).connect()
        text = str(refused.value)
        assert "refused the login" in text or "answered" in text, text
        assert not [s for s in [*secrets_of(server), "wrong-password"] if s in text], text


def test_refused_request_fails_the_run_without_leaking(server):
    _, plan = dimer("gfn2-xtb", driver="hessian")
    connection = connection_from_options(server.uri, username=READER, environ={"QCPORTAL_PASSWORD": READER_PASSWORD})
    backend = QCPortalBackend(connection, poll_interval=1.0)
    with backend, pytest.raises(RunFailed) as failed:
        Runner(plan, backend, progress=False, max_attempts=1).run()
    text = str(failed.value) + "\n".join(failed.value.failures.values())
    assert "403" in text or "forbidden" in text.lower(), text
    assert not [s for s in secrets_of(server) if s in text], text
    assert not records(server, plan)
