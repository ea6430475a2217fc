#!/opt/qcmb/bin/python
"""Start the QCFractal server with the qcmb-fractal plugin, secured, from environment variables and secrets.

Each start: write the configuration (security on; the session keys are made once and kept in the data
volume, so logins survive restarts), wait for PostgreSQL, create or upgrade the database (idempotent,
plugin tables included), make sure the admin and compute users exist with the passwords in their
secrets, then hand the process over to ``qcmb-fractal-server start``. Any QCFractal setting can be
overridden with QCFractal's own ``QCF_SECTION__KEY`` environment variables.

A password comes from ``NAME_FILE`` (a file, e.g. a compose secret under /run/secrets) or ``NAME``.
"""

import os
import secrets
import sys
import time
from pathlib import Path

import psycopg2
import yaml

DATA = Path(os.environ.get("QCMB_DATA", "/var/lib/qcmb"))
CONFIG = DATA / "server.yaml"
KEYS = DATA / "session-keys.yaml"


def env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def secret(name: str) -> str:
    """A password from NAME_FILE or NAME; refuse to start without one rather than run an open server."""
    path = os.environ.get(f"{name}_FILE")
    value = Path(path).read_text().strip() if path else os.environ.get(name, "").strip()
    if not value:
        sys.exit(f"qcmb-fractal server: set {name}_FILE (a secret file) or {name}; refusing to start without it.")
    return value


def session_keys() -> dict[str, str]:
    if not KEYS.exists():
        KEYS.write_text(
            yaml.safe_dump({"secret_key": secrets.token_urlsafe(32), "jwt_secret_key": secrets.token_urlsafe(32)})
        )
        KEYS.chmod(0o600)
    return yaml.safe_load(KEYS.read_text())


def write_config() -> dict:
    database = {
        "host": env("QCMB_DB_HOST", "postgres"),
        "port": int(env("QCMB_DB_PORT", "5432")),
        "username": env("QCMB_DB_USER", "qcfractal"),
        "password": secret("QCMB_DB_PASSWORD"),
        "database_name": env("QCMB_DB_NAME", "qcfractal"),
        "own": False,
    }
    config = {
        "name": env("QCMB_SERVER_NAME", "qcmb-fractal"),
        "base_folder": str(DATA),
        "enable_security": True,
        "allow_unauthenticated_read": False,
        "service_frequency": int(env("QCMB_SERVICE_FREQUENCY", "5")),
        "database": database,
        "api": {"host": "0.0.0.0", "port": int(env("QCMB_API_PORT", "7777")), **session_keys()},
    }
    CONFIG.write_text(yaml.safe_dump(config))
    CONFIG.chmod(0o600)
    return database


def connect(db: dict, dbname: str):
    return psycopg2.connect(
        host=db["host"], port=db["port"], user=db["username"], password=db["password"], dbname=dbname
    )


def database_state(db: dict, timeout: float = 120.0) -> str:
    """``missing``, ``empty`` (made by a DBA or by the postgres image) or ``qcfractal``; waits for PostgreSQL."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = connect(db, "postgres")
            break
        except psycopg2.OperationalError as err:
            if time.monotonic() > deadline:
                sys.exit(f"qcmb-fractal server: PostgreSQL at {db['host']}:{db['port']} did not answer: {err}")
            time.sleep(1)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db["database_name"],))
            if cur.fetchone() is None:
                return "missing"
    finally:
        conn.close()
    conn = connect(db, db["database_name"])
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('public.alembic_version')")
            return "empty" if cur.fetchone()[0] is None else "qcfractal"
    finally:
        conn.close()


def create_tables() -> None:
    """What init-db does after creating a database, for one that exists but is empty (init-db leaves those alone)."""
    from qcfractal.config import read_configuration
    from qcfractal.db_socket import SQLAlchemySocket

    SQLAlchemySocket.create_database_tables(read_configuration([str(CONFIG)]).database)


def ensure_users() -> None:
    """Admin and compute users with the passwords in their secrets (changed secrets take effect on restart)."""
    from qcfractal.config import read_configuration
    from qcfractal.db_socket import SQLAlchemySocket
    from qcportal.auth import UserInfo

    storage = SQLAlchemySocket(read_configuration([str(CONFIG)]))
    for prefix, role in (("QCMB_ADMIN", "admin"), ("QCMB_COMPUTE", "compute")):
        username = env(f"{prefix}_USER", role)
        password = secret(f"{prefix}_PASSWORD")
        existing = {u["username"] for u in storage.users.list()}
        if username in existing:
            storage.users.change_password(username, password)
        else:
            storage.users.add(UserInfo(username=username, role=role, enabled=True), password)
        print(f"qcmb-fractal server: user {username} ({role}) ready", flush=True)


def main() -> None:
    import subprocess

    state = database_state(write_config())
    if state == "empty":
        create_tables()
    command = "init-db" if state == "missing" else "upgrade-db"  # both also install the plugin's part
    subprocess.run(["qcmb-fractal-server", command, "--config", str(CONFIG)], check=True)
    ensure_users()
    os.execvp("qcmb-fractal-server", ["qcmb-fractal-server", "start", "--config", str(CONFIG), *sys.argv[1:]])


if __name__ == "__main__":
    main()
