"""``qcmb-fractal-server``: QCFractal's own server CLI with the qcmb_manybody record type hooked in.

``qcfractal-server start`` spawns its API and job-runner processes with the 'spawn' start method, which
re-imports the main module in each child; importing this module installs the hooks, and :func:`main`
makes this module the one children re-import (``python -m pkg`` mains are otherwise skipped), so every
process of the server knows the record type. ``init-db``/``upgrade-db`` run QCFractal's own command and then
install the plugin's tables, trigger, views and version stamp (idempotently); ``check`` only verifies.
Every other command is QCFractal's, unchanged.
"""

import argparse
import importlib.util
import logging
import os
import sys

from qcmb_fractal.errors import InputError
from qcmb_fractal.plugin.server.hooks import PluginStartupError, check_startup, install_hooks

install_hooks()

logger = logging.getLogger("qcmb_fractal.plugin.server.cli")

PLUGIN_COMMANDS = ("init-db", "upgrade-db", "check")


def _config(argv: list[str]):
    from qcfractal.config import read_configuration

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config")
    args, _ = parser.parse_known_args(argv)
    path = args.config or os.environ.get("QCF_CONFIG_PATH")
    if path is None:
        raise InputError("give the QCFractal server configuration with --config PATH (or set QCF_CONFIG_PATH).")
    if not os.path.isfile(path):
        raise InputError(
            f"QCFractal configuration {path} does not exist; create it with `init-config --config {path}`."
        )
    return read_configuration([os.path.abspath(path)])


def _command(argv: list[str]) -> str | None:
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg == "--config":
            skip_next = True
        elif not arg.startswith("-"):
            return arg
    return None


def _run_plugin_command(command: str, argv: list[str]) -> int:
    from qcfractal import qcfractal_server_cli as qcf_cli

    from qcmb_fractal.plugin.server.install import install_schema

    config = _config(argv)
    if command == "init-db":
        qcf_cli.server_init_db(config)
        install_schema(config.database)
    elif command == "upgrade-db":
        qcf_cli.server_upgrade_db(config)
        install_schema(config.database)
    check_startup(config.database)
    print(f"qcmb-fractal plugin ready in {config.database.safe_uri}")
    return 0


def _children_import_this_module() -> None:
    """Make spawned server processes re-import this module (and so install the hooks) as their main."""
    main_module = sys.modules["__main__"]
    main_module.__spec__ = importlib.util.find_spec(__name__)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _children_import_this_module()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")
    command = _command(argv)
    try:
        if command in PLUGIN_COMMANDS:
            return _run_plugin_command(command, argv)
        if command == "start":
            check_startup(_config(argv).database)
    except (PluginStartupError, InputError) as err:
        print(f"qcmb-fractal-server: {err}", file=sys.stderr)
        return 2

    from qcfractal import qcfractal_server_cli as qcf_cli

    sys.argv = ["qcfractal-server", *argv]
    qcf_cli.main()
    return 0
