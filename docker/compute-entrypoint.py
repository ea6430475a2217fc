#!/opt/qcmb/bin/python
"""Start a compute manager for a QCFractal server from environment variables and a password secret.

Writes the manager's configuration (one local executor sized by the environment), waits until the
server answers, then hands the process over to the manager. A password comes from
``QCMB_COMPUTE_PASSWORD_FILE`` (a file, e.g. a compose secret under /run/secrets) or
``QCMB_COMPUTE_PASSWORD``.
"""

import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

MANAGER = "qcmb-fractal-compute"  # warm workers; "qcfractal-compute-manager" reads the same file

DATA = Path(os.environ.get("QCMB_DATA", "/var/lib/qcmb"))
CONFIG = DATA / "manager.yaml"


def env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def password() -> str:
    path = os.environ.get("QCMB_COMPUTE_PASSWORD_FILE")
    value = Path(path).read_text().strip() if path else os.environ.get("QCMB_COMPUTE_PASSWORD", "").strip()
    if not value:
        sys.exit("qcmb-fractal compute: set QCMB_COMPUTE_PASSWORD_FILE (a secret file) or QCMB_COMPUTE_PASSWORD.")
    return value


def write_config() -> str:
    uri = env("QCMB_SERVER_URI", "http://server:7777")
    config = {
        "base_folder": str(DATA),
        "cluster": env("QCMB_CLUSTER", socket.gethostname()),
        "update_frequency": float(env("QCMB_UPDATE_FREQUENCY", "5")),
        "server": {"fractal_uri": uri, "username": env("QCMB_COMPUTE_USER", "compute"), "password": password()},
        "executors": {
            "local": {
                "type": "local",
                "max_workers": int(env("QCMB_WORKERS", "1")),
                "cores_per_worker": int(env("QCMB_CORES_PER_WORKER", str(os.cpu_count() or 1))),
                "memory_per_worker": float(env("QCMB_MEMORY_PER_WORKER", "2")),
                "compute_tags": env("QCMB_COMPUTE_TAGS", "*").split(","),
                "scratch_directory": str(DATA / "scratch"),
            }
        },
    }
    (DATA / "scratch").mkdir(parents=True, exist_ok=True)
    CONFIG.write_text(yaml.safe_dump(config))
    CONFIG.chmod(0o600)
    return uri


def wait_for_server(uri: str, timeout: float = 300.0) -> None:
    """The server runs init-db/upgrade-db before it listens; a manager started with it waits instead of failing."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{uri}/api/v1/information", timeout=5).close()
            return
        except urllib.error.HTTPError:  # it answered (a refusal is the manager's to handle, with its login)
            return
        except (urllib.error.URLError, OSError) as err:
            if time.monotonic() > deadline:
                sys.exit(f"qcmb-fractal compute: the server at {uri} did not answer: {err}")
            time.sleep(2)


def main() -> None:
    uri = write_config()
    wait_for_server(uri)
    os.execvp(MANAGER, [MANAGER, "--config", str(CONFIG), *sys.argv[1:]])


if __name__ == "__main__":
    main()
