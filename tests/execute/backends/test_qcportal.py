"""The QCPortal backend against a real QCFractal server and compute manager running xtb (and NWChem).

The server computes with qcmb-fractal-compute (the fault tests run QCFractal's own manager); the clusters are water
dimers and trimers.
One server serves the whole module; each test uses its own geometry or specification, because the
server deduplicates identical singlepoints across tests just as it does across reruns.
"""

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from qcmanybody.models.v2 import ManyBodyInput, ManyBodyResult

from qcmb_fractal.drive.state import ComponentProperties
from qcmb_fractal.errors import InputError, RunFailed
from qcmb_fractal.execute import Runner
from qcmb_fractal.execute.backends.local import LocalBackend
from qcmb_fractal.execute.backends.qcportal import (
    Connection,
    QCPortalBackend,
    connection_from_options,
    record_to_result,
)
from qcmb_fractal.plan import Plan, manybody_input
from qcmb_fractal.testing.molecules import water_cluster, water_trimer
from qcmb_fractal.testing.programs import needs_nwchem, needs_xtb
from qcmb_fractal.testing.reference import NWCHEM_HF, XTB_GFN2, assert_same_result, mbe_input, serial_reference

XTB = {"xtb": XTB_GFN2}
HF = {"hf": NWCHEM_HF}
UNCONVERGED = {"xtb-1-iteration": ("xtb", "gfn2-xtb", None)}

pytestmark = needs_xtb


def xtb_input(molecule, nbody: int, **options) -> ManyBodyInput:
    return mbe_input(molecule, XTB, {nbody: "xtb"}, bsse=["nocp"], **options)


SUBMITTER, PASSWORD = "qcmb_submitter", "submitter-password-123"


@pytest.fixture(scope="module")
def server():
    """A secured server, as a public QCArchive one is: users log in, the manager has its own account.

    Built from the shared fixture's pieces because users must exist before the manager starts.
    """
    from qcfractal.db_socket import SQLAlchemySocket
    from qcfractal.snowflake import FractalSnowflake
    from qcportal import PortalClient
    from qcportal.auth import UserInfo

    from qcmb_fractal.testing.fractal import drop_database, fresh_database, warm_manager

    name = "qcmb_qcportal_test"
    snowflake = FractalSnowflake(
        start=False,
        compute_workers=2,
        database_config=fresh_database(name, plugin=False),
        extra_config={"enable_security": True, "allow_unauthenticated_read": False, "loglevel": "WARNING"},
    )
    socket = SQLAlchemySocket(snowflake._qcf_config)
    for user, role, password in [
        ("qcmb_admin", "admin", "admin-password-123"),
        (SUBMITTER, "submit", PASSWORD),
        ("qcmb_manager", "compute", "manager-password-123"),
    ]:
        socket.users.add(UserInfo(username=user, role=role, enabled=True), password)
    token, _ = socket.auth.create_api_token(SUBMITTER, "qcmb-test")
    socket.engine.dispose()
    snowflake._compute_config.server.username = "qcmb_manager"
    snowflake._compute_config.server.password = "manager-password-123"
    snowflake._compute_config.update_frequency = 1
    snowflake._compute_enabled = False  # qcmb-fractal-compute computes here; the fault tests use QCFractal's manager
    snowflake.start()
    try:
        with warm_manager(snowflake):  # stopped before the API, so the manager can say goodbye
            uri = snowflake.get_uri()
            yield uri, PortalClient(uri, "qcmb_admin", "admin-password-123", show_motd=False), token
    finally:
        snowflake.stop()
        drop_database(name)


def backend(uri: str, **options) -> QCPortalBackend:
    env = {"QCPORTAL_PASSWORD": PASSWORD}
    return QCPortalBackend(connection_from_options(uri, username=SUBMITTER, environ=env), poll_interval=1.0, **options)


def singlepoints(client, plan: Plan, include: tuple[str, ...] = ()) -> list:
    """The plan's records on the server, found by content (same molecules, same specification)."""
    spec = plan.atomic_input(plan.tasks[0]).specification
    records = client.query_singlepoints(
        program=plan.tasks[0].program,
        driver=spec.driver.value,
        method=spec.model.method,
        include=["molecule", "compute_history", *include],
    )
    hashes = {_hash(plan, t) for t in plan.tasks}
    return [r for r in records if r.molecule.get_hash() in hashes and r.specification.keywords == spec.keywords]


def _hash(plan: Plan, task) -> str:
    from qcportal.molecules import Molecule

    return Molecule(**plan.atomic_input(task).molecule.convert_v(1).model_dump()).get_hash()


def test_xtb_gradient_matches_serial_and_local_and_a_second_client_reuses_the_records(server):
    uri, client, _ = server
    inp = xtb_input(water_trimer(), 3, driver="gradient")
    plan = Plan(inp)
    first = backend(uri)
    with first:
        runner = Runner(plan, first, progress=False)
        result = runner.run()
    with LocalBackend(1) as local:
        local_runner = Runner(plan, local, progress=False)
        expected = local_runner.run()

    assert len(plan.tasks) == 7
    assert (first.inserted, first.existing, first.resets) == (7, 0, 0)
    assert_same_result(result, serial_reference(inp))
    assert_same_result(result, expected)
    for task in plan.tasks:  # what the analysis reads, calculation by calculation
        mine = runner.driver.state.tasks[task.hash].properties.as_arrays()
        theirs = local_runner.driver.state.tasks[task.hash].properties.as_arrays()
        assert mine.keys() == theirs.keys() == {"energy", "gradient"}
        assert mine["energy"] == pytest.approx(theirs["energy"], abs=1e-10)
        assert np.abs(mine["gradient"] - theirs["gradient"]).max() < 1e-10
    records = {r.id: r for r in singlepoints(client, plan)}
    assert len(records) == 7
    assert {int(runner.driver.state.tasks[t.hash].reference) for t in plan.tasks} == set(records)

    # Another client (another machine) with the same plan: everything is found, nothing is recomputed
    second = backend(uri)
    with second:
        again = Runner(plan, second, progress=False).run()
    assert (second.inserted, second.existing, second.resets) == (0, 7, 0)
    assert again.properties.return_energy == result.properties.return_energy
    assert np.array_equal(np.asarray(again.return_result), np.asarray(result.return_result))
    assert all(len(r.compute_history) == 1 for r in singlepoints(client, plan))


def test_errored_records_are_reset_until_the_attempts_run_out(server):
    uri, client, _ = server
    data = mbe_input(water_cluster(2), UNCONVERGED, {1: "xtb-1-iteration"}, bsse=["nocp"]).model_dump()
    # One SCF iteration never converges: a runtime error, which is retried (an input_error would not be).
    data["specification"]["specification"]["xtb-1-iteration"]["keywords"] = {"max_iterations": 1}
    plan = Plan(manybody_input(data))
    be = backend(uri, tag="qcmb-test", priority="high")
    with be, pytest.raises(RunFailed) as failed:
        Runner(plan, be, progress=False, max_attempts=2).run()

    assert len(failed.value.failures) == 2
    assert all("Self consistent charge iterator" in error for error in failed.value.failures.values())
    assert (be.inserted, be.resets) == (2, 2)
    records = singlepoints(client, plan, ("task",))
    assert len(records) == 2
    assert [len(r.compute_history) for r in records] == [2, 2]  # one reset each, not a second record
    assert {(r.task_.compute_tag, r.task_.compute_priority.name) for r in records} == {("qcmb-test", "high")}


class FaultyClient:
    """Fault injection: the real client, except that its first ``faults`` polls find the server unreachable."""

    def __init__(self, client, faults: int) -> None:
        self.client, self.faults = client, faults

    def query_records(self, **kwargs):
        if self.faults > 0:
            self.faults -= 1
            raise ConnectionRefusedError("fault injected: server unreachable")
        return self.client.query_records(**kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


def submitter_client(uri: str):
    return connection_from_options(uri, username=SUBMITTER, environ={"QCPORTAL_PASSWORD": PASSWORD}).connect()


def test_a_server_outage_shorter_than_the_timeout_costs_no_attempt(server):
    uri, _, _ = server
    inp = xtb_input(water_cluster(2), 2, driver="gradient")
    plan = Plan(inp)
    faulty = FaultyClient(submitter_client(uri), faults=3)
    be = QCPortalBackend(client=faulty, poll_interval=1.0)
    with be:
        runner = Runner(plan, be, progress=False, max_attempts=1)
        result = runner.run()
    assert faulty.faults == 0
    assert all(runner.driver.state.tasks[t.hash].attempts == 0 for t in plan.tasks)
    assert_same_result(result, serial_reference(inp))


def test_a_server_outage_longer_than_the_timeout_fails_the_run_clearly(server):
    uri, _, _ = server
    plan = Plan(xtb_input(water_cluster(2), 2, driver="gradient"))
    be = QCPortalBackend(client=FaultyClient(submitter_client(uri), faults=10**6), poll_interval=1.0, server_timeout=0)
    with be, pytest.raises(RunFailed) as failed:
        Runner(plan, be, progress=False, max_attempts=2).run()
    assert set(failed.value.failures.values()) == {
        f"QCFractal server {uri} failed: ConnectionRefusedError: fault injected: server unreachable"
    }


def checkpointed(path) -> int:
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        except sqlite3.OperationalError:  # created, table not yet
            return 0


@pytest.mark.slow
def test_killed_client_resumes_without_submitting_anything_twice(server, tmp_path):
    uri, client, _ = server
    inp = xtb_input(water_cluster(3), 3)
    plan = Plan(inp)
    (tmp_path / "in.json").write_text(inp.model_dump_json())
    cmd = [sys.executable, "-m", "qcmb_fractal.cli", "-v", "run", "in.json", "--backend", "qcportal"]
    cmd += ["--server", uri, "--username", SUBMITTER, "--mode", "levels", "--poll-interval", "1"]
    cmd += ["--no-progress", "-o", "out.json"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "QCPORTAL_PASSWORD": PASSWORD}

    # Levels mode: when the first monomer is checkpointed, the dimers and the trimer are not even sent yet
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 120
        while checkpointed(tmp_path / "out.sqlite") == 0:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (tmp_path / "out.json").exists()
    finished_before = checkpointed(tmp_path / "out.sqlite")
    on_server = len(singlepoints(client, plan))
    assert 1 <= finished_before <= on_server < len(plan.tasks)

    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    records = singlepoints(client, plan)
    assert len(records) == len(plan.tasks) == 7
    assert all(len(r.compute_history) == 1 for r in records)  # each computed exactly once
    # The rerun takes what its checkpoint holds, collects what the killed client had sent, sends the rest
    new, found = len(plan.tasks) - on_server, on_server - finished_before
    assert f"{new} singlepoints submitted, {found} found already on the server" in rerun.stderr

    assert_same_result(ManyBodyResult.model_validate_json((tmp_path / "out.json").read_text()), serial_reference(inp))


@needs_nwchem
@pytest.mark.nwchem
def test_nwchem_counterpoise_dimer_matches_qcmanybody_serial(server):
    uri, client, token = server
    inp = mbe_input(water_cluster(2), HF, {2: "hf"}, bsse=["cp", "nocp"])
    plan = Plan(inp)
    be = QCPortalBackend(connection_from_options(uri, environ={"QCPORTAL_API_TOKEN": token}), poll_interval=1.0)
    with be:
        result = Runner(plan, be, progress=False, mode="levels").run()
    assert_same_result(result, serial_reference(inp))
    ghosted = [r for r in singlepoints(client, plan) if not all(r.molecule.real)]
    assert len(ghosted) == 2  # the monomers in the dimer basis kept their ghost atoms on the server


# ---- credentials: never on the command line, from QCPortal's usual places -------------------------------------


def test_wrong_password_is_one_clear_error_and_no_password_option_exists(server, tmp_path, monkeypatch, capsys):
    from qcmb_fractal.cli import main

    uri, _, _ = server
    (tmp_path / "in.json").write_text(xtb_input(water_cluster(2), 2).model_dump_json())
    monkeypatch.setenv("QCPORTAL_PASSWORD", "not-the-password")
    args = ["run", str(tmp_path / "in.json"), "--backend", "qcportal", "--server", uri, "--username", SUBMITTER]
    assert main([*args, "-o", str(tmp_path / "out.json")]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and SUBMITTER in err and "not-the-password" not in err
    with pytest.raises(SystemExit):
        main([*args, "--password", PASSWORD])
    assert not (tmp_path / "out.json").exists()


def test_password_comes_from_the_environment_and_stays_secret():
    conn = connection_from_options(
        "https://qca.example.org", username="alice", environ={"QCPORTAL_PASSWORD": "s3cret"}, interactive=False
    )
    assert conn.password is not None and conn.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(conn) and "s3cret" not in conn.model_dump_json()


def test_username_without_password_off_a_terminal_is_an_input_error():
    with pytest.raises(InputError, match="QCPORTAL_PASSWORD"):
        connection_from_options("https://qca.example.org", username="alice", environ={}, interactive=False)


def test_address_and_token_from_the_environment():
    env = {"QCPORTAL_ADDRESS": "https://qca.example.org", "QCPORTAL_API_TOKEN": "qcp_x"}
    conn = connection_from_options(None, environ=env, config_file=None)
    assert conn.address == "https://qca.example.org" and conn.api_token is not None


def test_server_name_picks_an_entry_of_the_qcportal_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "qcportal_config.yaml").write_text("mine:\n  address: http://localhost:1\n")
    assert connection_from_options("mine", environ={}).config_file == str(tmp_path / "qcportal_config.yaml")
    with pytest.raises(InputError, match="--username"):
        connection_from_options("mine", username="bob", environ={})
    assert connection_from_options("otherhost:7777", environ={}).address == "otherhost:7777"


def test_no_server_anywhere_is_an_input_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(InputError, match="--server"):
        connection_from_options(None, environ={})


# ---- what the server stores reads back as the local backend reads it ------------------------------------------


def stored_like_qcfractal(result) -> SimpleNamespace:
    """A complete record as QCFractal keeps it: the manager's v1 result through the server's own storage code."""
    from qcelemental.models import QCEL_V1V2_SHIM_CODE
    from qcfractal.components.record_utils import build_extras_properties
    from qcportal.qcschema_v1 import AtomicResult

    sent = json.dumps(result.convert_v(QCEL_V1V2_SHIM_CODE).model_dump(mode="json"))  # qcengine_compute.py
    extras, properties = build_extras_properties(AtomicResult(**json.loads(sent)))
    properties = json.loads(json.dumps(properties))  # PostgreSQL JSON column
    return SimpleNamespace(id=1, properties=properties, extras=extras, compute_history_=None)


def test_xtb_gradient_record_reads_back_exactly_as_the_local_result():
    import qcengine

    plan = Plan(xtb_input(water_cluster(2), 2, driver="gradient"))
    task = plan.tasks[-1]
    local = qcengine.compute(plan.atomic_input(task), "xtb", raise_error=True)
    assert local.properties.return_gradient is None  # xtb puts the gradient only in return_result

    rebuilt = record_to_result(stored_like_qcfractal(local), plan.atomic_input(task), "xtb")
    assert ComponentProperties.from_atomic_result(rebuilt) == ComponentProperties.from_atomic_result(local)
    assert np.asarray(rebuilt.return_result).shape == (6, 3)


def test_hessian_record_reads_back_with_its_shapes():
    from qcelemental.models.v2 import AtomicProperties, AtomicResult, Provenance

    plan = Plan(mbe_input(water_cluster(2), HF, {2: "hf"}, bsse=["nocp"], driver="hessian"))
    task = plan.tasks[0]
    atomic = plan.atomic_input(task)
    rng = np.random.default_rng(7)
    hessian, gradient = rng.normal(size=(9, 9)), rng.normal(size=(3, 3))
    local = AtomicResult(
        input_data=atomic,
        molecule=atomic.molecule,
        properties=AtomicProperties(
            calcinfo_natom=3, return_energy=-74.96, return_gradient=gradient, return_hessian=hessian
        ),
        return_result=hessian,
        success=True,
        provenance=Provenance(creator="NWChem", version="7", routine="nwchem"),
    )
    record = stored_like_qcfractal(local)
    del record.properties["calcinfo_natom"]  # not every harness reports it
    rebuilt = ComponentProperties.from_atomic_result(record_to_result(record, atomic, "nwchem"))
    assert rebuilt == ComponentProperties.from_atomic_result(local)
    assert np.array_equal(rebuilt.as_arrays()["hessian"], hessian)


def test_cli_options_reach_the_backend(monkeypatch):
    from qcmb_fractal.cli import build_parser

    monkeypatch.setenv("QCPORTAL_PASSWORD", PASSWORD)
    argv = ["run", "in.json", "--backend", "qcportal", "--server", "https://qca.example.org", "--username", SUBMITTER]
    args = build_parser().parse_args([*argv, "--tag", "gpu", "--priority", "high", "--poll-interval", "30"])
    be = QCPortalBackend.from_arguments(args)
    assert (be.tag, be.priority, be.poll_interval) == ("gpu", "high", 30.0)
    assert be.connection is not None and be.connection.username == SUBMITTER


# ---- the I/O thread's decisions, against a fake client that plants one fault each -------------------------------


def fake_record(rid: int, status: str, **fields) -> SimpleNamespace:
    return SimpleNamespace(
        id=rid, status=SimpleNamespace(value=status), manager_name=None, compute_history_=None, **fields
    )


def test_bad_backend_settings_are_input_errors_and_submit_needs_start():
    conn = connection_from_options("https://qca.example.org", environ={})
    with pytest.raises(InputError, match="server connection"):
        QCPortalBackend()
    with pytest.raises(InputError, match="--priority must be one of low, normal, high, not 'urgent'"):
        QCPortalBackend(conn, priority="urgent")
    with pytest.raises(InputError, match="--poll-interval must be a positive"):
        QCPortalBackend(conn, poll_interval=0)
    with pytest.raises(RuntimeError, match="start"):
        QCPortalBackend(conn).submit_many([])


def test_token_with_username_and_a_missing_config_file_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not both"):
        connection_from_options("https://a.org", username="bob", environ={"QCPORTAL_API_TOKEN": "t"})
    with pytest.raises(InputError, match="does not exist"):
        connection_from_options("mine", config_file=str(tmp_path / "nope.yaml"), environ={})
    (tmp_path / "qcportal_config.yaml").write_text("address: http://localhost:1\n")
    conn = connection_from_options(None, config_file=str(tmp_path), environ={})
    assert (conn.config_file, conn.server) == (str(tmp_path / "qcportal_config.yaml"), None)


def test_a_server_missing_from_the_config_file_is_an_input_error_naming_it(tmp_path):
    config = tmp_path / "qcportal_config.yaml"
    config.write_text("mine:\n  address: http://localhost:1\n")
    with pytest.raises(InputError, match=re.escape(f"cannot connect to the QCFractal server theirs in {config}")):
        Connection(config_file=str(config), server="theirs").connect()


def test_only_connection_failures_and_server_errors_are_transient():
    import requests

    from qcmb_fractal.execute.backends.qcportal import _is_transient

    assert _is_transient(ConnectionRefusedError())
    assert _is_transient(requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead"))
    assert _is_transient(type("FaultServerError", (Exception,), {"status_code": 503})())
    assert not _is_transient(type("FaultForbidden", (Exception,), {"status_code": 403})())
    assert not _is_transient(ValueError("bad"))


def test_unfinished_errored_and_unreadable_records_are_failed_attempts():
    plan = Plan(xtb_input(water_cluster(2), 2))
    be = QCPortalBackend(client=SimpleNamespace(address="http://fake"))
    be.plan, task = plan, plan.tasks[0]
    cancelled = be._outcome(task, fake_record(5, "cancelled"))
    assert (cancelled.success, cancelled.error, cancelled.reference) == (
        False,
        "singlepoint record 5 is cancelled on the server",
        "5",
    )
    errored = be._outcome(task, fake_record(6, "error", error={"error_type": "scf", "error_message": "diverged"}))
    assert errored.error == "scf: diverged (record 6)"

    class FaultRecord(SimpleNamespace):
        @property
        def error(self):
            raise ConnectionError("gone")

    hidden = FaultRecord(id=7, status=SimpleNamespace(value="error"))
    assert be._error_text(hidden) == "singlepoint record 7 errored (error text unavailable: gone)"
    broken = be._outcome(task, fake_record(8, "complete", properties={"return_energy": "not a number"}, extras={}))
    assert not broken.success and broken.error.startswith("record 8 unreadable")


def test_a_refused_reset_is_no_crash_but_an_outage_during_it_is_retried(caplog):
    be = QCPortalBackend(client=SimpleNamespace(address="http://fake"))

    def fault_forbidden(ids):
        raise type("FaultForbidden", (Exception,), {"status_code": 403})("not yours")

    def fault_outage(ids):
        raise ConnectionRefusedError("down")

    assert be._modify(lambda ids: None, [1], "reset")
    assert not be._modify(fault_forbidden, [1, 2], "reset")
    assert "cannot reset records [1, 2]: not yours" in caplog.text
    with pytest.raises(ConnectionRefusedError):
        be._modify(fault_outage, [1], "reset")


def test_missing_managers_are_warned_about_and_a_forbidden_listing_is_ignored(caplog):
    managers = [
        SimpleNamespace(programs=["psi4"], compute_tags=["*"]),
        SimpleNamespace(programs=["xtb"], compute_tags=["cpu"]),
    ]
    be = QCPortalBackend(client=SimpleNamespace(query_managers=lambda status: managers), tag="gpu")
    be._warn_without_managers({"xtb", "psi4"})
    assert "no active compute manager runs xtb for tag 'gpu'" in caplog.text
    assert "runs psi4" not in caplog.text

    def fault_forbidden(status):
        raise PermissionError("forbidden")

    caplog.clear()
    QCPortalBackend(client=SimpleNamespace(query_managers=fault_forbidden))._warn_without_managers({"xtb"})
    assert "no active compute manager" not in caplog.text


def test_a_refused_batch_fails_its_tasks_and_a_failed_send_is_queued_again():
    from concurrent.futures import Future

    from qcmb_fractal.execute.backends.qcportal import _Submission

    plan = Plan(xtb_input(water_cluster(2), 2))
    meta = SimpleNamespace(errors=[], error_string="unknown program", existing_idx=[], inserted_idx=[])
    client = SimpleNamespace(address="http://fake", api_limits={}, add_singlepoints=lambda *a, **k: (meta, []))
    be = QCPortalBackend(client=client)
    be.plan = plan
    refused = [_Submission(t, Future()) for t in plan.tasks[:2]]
    be._queue = list(refused)
    assert be._submit_queued() == 2
    for sub in refused:
        outcome = sub.future.result(timeout=0)
        assert (outcome.success, outcome.error) == (False, "the server refused this singlepoint: unknown program")
    assert not be._pending and not be._queue

    def fault_outage(*args, **kwargs):
        raise ConnectionRefusedError("down")

    subs = [_Submission(t, Future()) for t in plan.tasks[:2]]
    be.client = SimpleNamespace(address="http://fake", api_limits={"add_records": 1}, add_singlepoints=fault_outage)
    be._queue = list(subs)
    with pytest.raises(ConnectionRefusedError):
        be._submit_queued()
    assert [s.task.hash for s in be._queue] == [s.task.hash for s in subs]
    assert not any(s.future.done() for s in subs)


def test_deleted_and_cancelled_records_are_revived_before_another_attempt():
    class FakeClient:
        def __init__(self) -> None:
            self.api_limits: dict = {}
            self.status = {1: "deleted", 2: "cancelled", 3: "complete"}
            self.calls: list = []

        def get_records(self, ids, include):
            return [fake_record(i, self.status[i]) for i in ids]

        def undelete_records(self, ids):
            self.calls.append(("undelete", ids))
            self.status.update(dict.fromkeys(ids, "error"))  # what it was before deletion

        def uncancel_records(self, ids):
            self.calls.append(("uncancel", ids))

        def reset_records(self, ids):
            self.calls.append(("reset", ids))

    client = FakeClient()
    be = QCPortalBackend(client=client)
    be._revive([1, 2, 3])
    assert client.calls == [("undelete", [1]), ("uncancel", [2]), ("reset", [1])]
    assert be.resets == 1
