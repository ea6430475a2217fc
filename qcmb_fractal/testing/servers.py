"""Real server processes for fault tests: ``qcfractal-server start`` (or ``qcmb-fractal-server start``) and
a compute manager (``qcfractal-compute-manager`` or ``qcmb-fractal-compute``), each in its own process group,
so a test can SIGKILL exactly one of them.

The server is secured, with one user per role; its heartbeat settings are lowered so a dead manager is
noticed in seconds.
"""

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml
from qcportal import PortalClient

from qcmb_fractal.testing.fractal import PG_HOST, PG_PASSWORD, PG_PORT, PG_ROLE, checkout_db_name, drop_database

ADMIN, ADMIN_PASSWORD = "qcmb_srvfault_admin", "admin-password-123"
SUBMITTER, SUBMITTER_PASSWORD = "qcmb_srvfault_submitter", "submitter-password-123"
MANAGER, MANAGER_PASSWORD = "qcmb_srvfault_manager", "manager-password-123"
READER, READER_PASSWORD = "qcmb_srvfault_reader", "reader-password-123"
# Heartbeats are 1 s apart. A manager silent for HEARTBEAT_MAX_MISSED s is declared dead and its tasks handed
# back; a manager that cannot reach the server for as long gives up on its own (it reads the same setting at
# start), so a server restart needs a larger value than a quick test of a dead manager wants.
HEARTBEAT_MAX_MISSED = 5
OUTAGE_TOLERANT_MAX_MISSED = 90


def _free_port() -> int:
    from qcfractal.port_util import find_open_port

    return find_open_port("127.0.0.1")


def _env(tmp: Path) -> dict[str, str]:
    """Children inherit this checkout and a private temporary directory, which must stay empty."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TMPDIR": str(tmp)}


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process and everything it started: a crashed node, not a shutdown."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@dataclass
class Server:
    """A ``qcfractal-server start`` process group on its own database, restartable on that database."""

    root: Path
    database: str
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen | None = None
    starts: int = 0
    heartbeat_max_missed: int = HEARTBEAT_MAX_MISSED
    service_frequency: int = 1  # seconds between service iterations (QCFractal's default is 60)
    command: tuple[str, ...] = ("qcfractal-server",)  # or the plugin's ``qcmb-fractal-server``
    env: dict[str, str] = field(default_factory=dict)  # added to the environment of the server's processes
    keys: dict[str, str] = field(default_factory=lambda: {k: secrets.token_urlsafe(32) for k in ("secret", "jwt")})
    managers: list["Manager"] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.database = checkout_db_name(self.database)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.root / "server.yaml"

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        config = {
            "base_folder": str(self.root),
            "temporary_dir": str(self.root / "qcf_tmp"),
            "loglevel": "INFO",
            "enable_security": True,
            "allow_unauthenticated_read": False,
            "service_frequency": self.service_frequency,
            "heartbeat_frequency": 1,
            "heartbeat_frequency_jitter": 0.0,
            "heartbeat_max_missed": self.heartbeat_max_missed,
            "database": {
                "own": False,
                "host": PG_HOST,
                "port": PG_PORT,
                "username": PG_ROLE,
                "password": PG_PASSWORD,
                "database_name": self.database,
            },
            "api": {
                "host": "127.0.0.1",
                "port": self.port,
                "secret_key": self.keys["secret"],  # kept across restarts: logged-in clients stay logged in
                "jwt_secret_key": self.keys["jwt"],
                "user_session_cookie_secure": False,
            },
        }
        self.config.write_text(yaml.safe_dump(config))

    def add_users(self) -> None:
        from qcfractal.config import read_configuration
        from qcfractal.db_socket import SQLAlchemySocket
        from qcportal.auth import UserInfo

        socket = SQLAlchemySocket(read_configuration([str(self.config)]))
        for user, role, password in [
            (ADMIN, "admin", ADMIN_PASSWORD),
            (SUBMITTER, "submit", SUBMITTER_PASSWORD),
            (MANAGER, "compute", MANAGER_PASSWORD),
            (READER, "read", READER_PASSWORD),
        ]:
            socket.users.add(UserInfo(username=user, role=role, enabled=True), password)
        socket.engine.dispose()

    def start(self) -> None:
        self.starts += 1
        log = open(self.root / f"server-{self.starts}.log", "w")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [*self.command, "start", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.environ(),
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.log()
            with contextlib.suppress(requests.RequestException):  # a PortalClient would back off for seconds
                if requests.get(f"{self.uri}/api/v1/information", timeout=5).status_code < 500:  # 401: up, secured
                    return
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.2)

    def environ(self) -> dict[str, str]:
        return {**_env(self.root / "tmp"), **self.env}

    def run(self, *args: str) -> subprocess.CompletedProcess:
        """Run another command of the server's program (``upgrade-db``, ``user add``, ...) on its configuration."""
        command = [*self.command, *args, "--config", str(self.config)]
        return subprocess.run(command, capture_output=True, text=True, env=self.environ(), timeout=300)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), as an operator's Ctrl-C."""
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        finally:
            _kill_group(self.proc)

    def kill(self) -> None:
        assert self.proc is not None
        _kill_group(self.proc)

    def reconfigure(self, heartbeat_max_missed: int) -> None:
        """Restart cleanly (SIGTERM) with other heartbeat settings; managers started later pick them up."""
        if heartbeat_max_missed == self.heartbeat_max_missed:
            return
        self.stop()
        self.heartbeat_max_missed = heartbeat_max_missed
        self.write_config()
        self.start()

    def admin(self) -> PortalClient:
        return PortalClient(self.uri, ADMIN, ADMIN_PASSWORD, show_motd=False)

    def log(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.root.glob("server-*.log")))


# The managers a test can start: QCFractal's own, and ours from this checkout (its console script belongs to
# the installed copy, so it runs as a module).
QCFRACTAL_MANAGER = ("qcfractal-compute-manager",)
QCMB_MANAGER = (sys.executable, "-m", "qcmb_fractal.compute")


@dataclass
class Manager:
    """A compute manager process group running xtb, by default one task at a time."""

    root: Path
    server: Server
    name: str
    proc: subprocess.Popen | None = None
    command: tuple[str, ...] = QCFRACTAL_MANAGER  # or QCMB_MANAGER
    max_workers: int = 1
    update_frequency: float = 1

    @property
    def folder(self) -> Path:
        return self.root / self.name

    def registered(self) -> Any:
        """The server's record of this manager (its full name carries a fresh UUID)."""
        (found,) = [m for m in self.server.admin().query_managers() if m.cluster == self.name]
        return found

    def start(self) -> None:
        folder = self.folder
        (folder / "scratch").mkdir(parents=True)
        (folder / "tmp").mkdir()
        config = {
            "base_folder": str(folder),
            "cluster": self.name,
            "loglevel": "INFO",
            "logfile": str(folder / "manager.log"),
            "update_frequency": self.update_frequency,
            "update_frequency_jitter": 0.0,
            "parsl_run_dir": str(folder / "parsl"),
            "server": {"fractal_uri": self.server.uri, "username": MANAGER, "password": MANAGER_PASSWORD},
            "executors": {
                "local": {
                    "type": "local",
                    "cores_per_worker": 1,
                    "memory_per_worker": 1,
                    "max_workers": self.max_workers,
                    "compute_tags": ["*"],
                    "scratch_directory": str(folder / "scratch"),
                }
            },
        }
        (folder / "manager.yaml").write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen(
            [*self.command, "--config", str(folder / "manager.yaml")],
            stdout=subprocess.DEVNULL,
            stderr=open(folder / "stderr.log", "w"),  # noqa: SIM115
            env=_env(folder / "tmp"),
            start_new_session=True,
        )

    def kill(self) -> None:
        assert self.proc is not None
        _kill_group(self.proc)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), so the server hears the manager leave."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _kill_group(self.proc)

    def log(self) -> str:
        path = self.root / self.name / "manager.log"
        return path.read_text()[-3000:] if path.exists() else ""


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    """``server`` configured (users included) and started; killed and its database dropped afterwards."""
    server.write_config()
    server.add_users()
    try:
        server.start()
        yield server
    finally:
        if server.proc is not None:
            server.kill()
        drop_database(server.database)


def wait_until(condition: Callable[[], bool], timeout: float, what: str, diagnostics: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{diagnostics()}"
        time.sleep(0.1)


def assert_no_temporary_files(server: Server, *managers: Manager) -> None:
    folders = [server.root / "tmp", server.root / "qcf_tmp"]
    folders += [m.folder / sub for m in managers for sub in ("tmp", "scratch")]
    left = [str(p) for folder in folders if folder.exists() for p in folder.rglob("*")]
    assert not left, f"temporary files left behind: {left}"
