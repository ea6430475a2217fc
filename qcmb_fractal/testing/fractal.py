"""A real QCFractal server on the machine's PostgreSQL plus a real compute manager, for tests and benchmarks.

QCFractal's own snowflake starts a private PostgreSQL with ``initdb``, which refuses to run as root,
so this points it at the machine's server instead (trust auth on 127.0.0.1) and gives every caller its
own database. The manager's update frequency is hard-coded to 5 s in the snowflake; tests lower it to
1 s (and the service frequency to 1 s) because each child calculation otherwise waits for that poll.
"""

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import psycopg2
from psycopg2 import sql
from qcfractal.config import DatabaseConfig
from qcfractal.postgres_harness import PostgresHarness
from qcfractal.snowflake import FractalSnowflake
from qcportal import PortalClient
from qcportal.molecules import Molecule as PortalMolecule
from qcportal.record_models import RecordStatusEnum

logger = logging.getLogger(__name__)

PG_HOST = os.environ.get("QCMB_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("QCMB_PG_PORT", "5432"))
PG_SUPERUSER = os.environ.get("QCMB_PG_SUPERUSER", "postgres")
# The same login role scripts/postgres.sh creates for CI; created here too if missing.
PG_ROLE = os.environ.get("QCMB_TEST_PG_USER", "qcmb_test")
PG_PASSWORD = os.environ.get("QCMB_TEST_PG_PASSWORD", "qcmb_test")
# Checkouts testing side by side on one PostgreSQL set different suffixes, so they never share a database.
DB_SUFFIX = os.environ.get("QCMB_TEST_DB_SUFFIX", "")


def checkout_db_name(name: str) -> str:
    """``name`` with this checkout's suffix; idempotent, so helpers may apply it at every boundary."""
    return name if name.endswith(DB_SUFFIX) else f"{name}{DB_SUFFIX}"


def _superuser_connection():
    try:
        return psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_SUPERUSER, dbname="postgres")
    except psycopg2.OperationalError:
        # The machine's cluster may simply be down (containers do not run systemd); start it once and retry.
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "start"], check=False)
        return psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_SUPERUSER, dbname="postgres")


def ensure_login_role() -> None:
    """Create the login role the server connects as (QCFractal needs a username and password)."""
    conn = _superuser_connection()
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (PG_ROLE,))
            if cur.fetchone() is None:
                cur.execute(
                    sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD %s").format(sql.Identifier(PG_ROLE)),
                    (PG_PASSWORD,),
                )
    finally:
        conn.close()


def drop_database(db_name: str) -> None:
    """Drop a test database even while a stopped server's connection pool still holds connections to it."""
    db_name = checkout_db_name(db_name)
    conn = _superuser_connection()
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db_name)))
    finally:
        conn.close()


def database_config(db_name: str, base_folder: str = "/tmp") -> DatabaseConfig:
    return DatabaseConfig(
        base_folder=base_folder,
        host=PG_HOST,
        port=PG_PORT,
        username=PG_ROLE,
        password=PG_PASSWORD,
        database_name=checkout_db_name(db_name),
        own=False,
    )


def fresh_database(db_name: str, *, plugin: bool) -> DatabaseConfig:
    """Drop ``db_name`` if it exists and create it with QCFractal's tables (and the plugin's, if asked).

    Without ``plugin`` the database may still get the plugin's tables: a process with the plugin loaded
    (installed packages load it everywhere) installs them with QCFractal's. :func:`plain_database` never does.
    """
    ensure_login_role()
    cfg = database_config(db_name)
    drop_database(db_name)
    PostgresHarness(cfg).create_database(create_tables=True)
    if plugin:
        from qcmb_fractal.plugin.server.install import install_schema

        install_schema(cfg)
    return cfg


def plain_database(db_name: str) -> DatabaseConfig:
    """A QCFractal database made by a process without the plugin, as before qcmb-fractal was installed."""
    code = f"from qcmb_fractal.testing.fractal import fresh_database; fresh_database({db_name!r}, plugin=False)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "QCMB_FRACTAL_AUTOLOAD": "0"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    return database_config(db_name)


@contextlib.contextmanager
def fractal_snowflake(
    db_name: str,
    *,
    plugin: bool,
    compute_workers: int = 2,
    update_frequency: float = 1.0,
    service_frequency: int = 1,
    keep_database: bool = False,
    extra_config: dict[str, Any] | None = None,
    manager: Literal["qcfractal", "qcmb"] = "qcfractal",
) -> Iterator[tuple[FractalSnowflake, PortalClient]]:
    """A started snowflake (API, job runner, compute manager) on a fresh PostgreSQL database.

    ``manager="qcmb"`` computes with qcmb-fractal-compute's manager (in a thread, as the snowflake runs its own)
    instead of QCFractal's: tests that need *a* manager finish their records seconds sooner.

    With ``plugin=True`` the qcmb-fractal plugin is loaded into this process first and its schema is
    installed, exactly as ``qcmb-fractal-server init-db`` does on a real server. ``extra_config`` goes into the
    server's configuration (e.g. ``{"qcmb_fractal": {"max_children_per_record": 50}}``).
    """
    if plugin:
        from qcmb_fractal.plugin.server.hooks import activate

        activate()
    cfg = fresh_database(db_name, plugin=plugin)
    snowflake = FractalSnowflake(
        start=False,
        compute_workers=compute_workers,
        database_config=cfg,
        extra_config={"service_frequency": service_frequency, "loglevel": "WARNING", **(extra_config or {})},
    )
    # The snowflake hard-codes a 5 s manager poll; every child would wait for it.
    snowflake._compute_config.update_frequency = update_frequency
    if plugin:
        from qcmb_fractal.plugin.server.hooks import check_startup

        check_startup(cfg)
    if manager == "qcmb":
        snowflake._compute_enabled = False  # the snowflake's own manager stays off; ours runs below
    snowflake.start()
    try:
        if manager == "qcmb" and compute_workers > 0:
            with warm_manager(snowflake):
                yield snowflake, snowflake.client()
        else:
            yield snowflake, snowflake.client()
    finally:
        snowflake.stop()
        if not keep_database:
            drop_database(db_name)


@contextlib.contextmanager
def warm_manager(snowflake: FractalSnowflake) -> Iterator[Any]:
    """qcmb-fractal-compute's manager on a started snowflake's own manager configuration, in a thread.

    For a snowflake made with ``_compute_enabled = False``; the manager stops (and deactivates) on exit.
    """
    from qcmb_fractal.compute import WarmComputeManager

    manager = WarmComputeManager(snowflake._compute_config)
    thread = threading.Thread(target=manager.start, name="qcmb-fractal-compute", daemon=True)
    thread.start()
    try:
        yield manager
    finally:
        manager.stop()
        thread.join(timeout=60)


def portal_molecule(molecule: Any) -> PortalMolecule:
    """A QCSchema v2 molecule (what the planner and the testing helpers use) as QCPortal's own Molecule."""
    return PortalMolecule(**molecule.convert_v(1).model_dump())


def wait_for_record(client: PortalClient, record_id: int, timeout: float = 240.0) -> Any:
    """The record once it is complete or errored; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        record = client.get_records(record_id)
        if record.status in (RecordStatusEnum.complete, RecordStatusEnum.error):
            return record
        assert time.monotonic() < deadline, f"record {record_id} still {record.status.value} after {timeout} s"
        time.sleep(0.5)


def wait_for_record_output(client: PortalClient, record_id: int, text: str, timeout: float = 120.0) -> Any:
    """The record once its stdout contains ``text``; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        record = client.get_records(record_id, include=["compute_history"])
        if text in (record.stdout or ""):
            return record
        assert time.monotonic() < deadline, f"record {record_id} never printed {text!r}; its output:\n{record.stdout}"
        time.sleep(0.5)
