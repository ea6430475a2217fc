"""``qcmb-fractal-server``: QCFractal's server command (``qcfractal-server``) with the plugin loaded and named.

Every ``qcfractal-server`` command works here and is parsed by QCFractal itself; the plugin adds
``check`` (verify QCFractal version, hooks and database, change nothing), checks before ``start`` so a
refusal is one line, says the plugin is ready after ``init-db``/``upgrade-db`` (QCFractal's own commands
install its schema through the hooks), and writes its ``qcmb_fractal`` section in ``init-config``. A usage
mistake (no command, no configuration, a short password, ...) prints one line and exits 2; ``-v`` shows
the traceback instead.

An installed qcmb-fractal loads the plugin into every process through its .pth autoload. From a source
checkout there is none, so importing this module as a spawned child's main module loads it: ``qcfractal-server
start`` spawns its API and job-runner processes with the 'spawn' method, which re-imports the main module,
and :func:`main` makes this module the one re-imported (``python -m pkg`` mains are otherwise skipped).
"""

import argparse
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

import qcfractal

import qcmb_fractal
from qcmb_fractal.errors import InputError
from qcmb_fractal.plugin import RECORD_TYPE
from qcmb_fractal.plugin.server.hooks import PluginStartupError, activate, check_startup, qcfractal_commands

PROG = "qcmb-fractal-server"
DESCRIPTION = f"""\
QCFractal's server command (qcfractal-server) with qcmb-fractal's plugin loaded: the {RECORD_TYPE} record type,
a many-body expansion that the server runs as a service over ordinary singlepoint records. Every qcfractal-server
command works here. With qcmb-fractal installed, plain qcfractal-server commands load the plugin too."""
EPILOG = f"""\
Typical first run:
  {PROG} init-config --config server.yaml      # then edit database, api and qcmb_fractal
  {PROG} init-db --config server.yaml
  {PROG} user add admin --role admin --config server.yaml
  {PROG} start --config server.yaml
Run `{PROG} COMMAND --help` for the options of a command."""
PLUGIN_NOTES = {
    "init-config": "; adds the plugin's qcmb_fractal section",
    "init-db": "; adds the plugin's tables and views",
    "upgrade-db": "; installs or upgrades the plugin's tables and views",
    "start": "; runs `check` first",
    "start-api": "; runs `check` first",
    "start-job-runner": "; runs `check` first",
}
CHECK_HELP = "Verify the plugin: QCFractal version, hooks, the database's tables and views. Changes nothing."
HELP_FLAGS = ("-h", "--help")


def version_text() -> str:
    return (
        f"{PROG} {qcmb_fractal.__version__} (qcmb-fractal's QCFractal plugin, record type {RECORD_TYPE}) "
        f"on QCFractal {qcfractal.__version__}"
    )


def build_parser() -> argparse.ArgumentParser:
    """Our own top level (help, version, check); QCFractal's commands are listed here but parsed by QCFractal."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=version_text())
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more output; tracebacks on errors")
    parser.add_argument("--config", help="the QCFractal server configuration file (default: $QCF_CONFIG_PATH)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    check = commands.add_parser("check", help=CHECK_HELP, description=CHECK_HELP)
    check.add_argument("--config", default=argparse.SUPPRESS, help="the QCFractal server configuration file")
    check.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="tracebacks on errors")
    for name, help_text in qcfractal_commands():
        commands.add_parser(name, help=help_text.rstrip(".") + PLUGIN_NOTES.get(name, ""), add_help=False)
    return parser


def _config_path(argv: list[str]) -> str | None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config")
    return parser.parse_known_args(argv)[0].config or os.environ.get("QCF_CONFIG_PATH")


def _config(argv: list[str]) -> Any:
    from qcfractal.config import read_configuration

    path = _config_path(argv)
    if path is None:
        raise InputError("give the QCFractal server configuration with --config PATH (or set QCF_CONFIG_PATH).")
    if not os.path.isfile(path):
        raise InputError(f"QCFractal configuration {path} does not exist; create it with `{PROG} init-config`.")
    return read_configuration([os.path.abspath(path)])


def _needs_config(argv: list[str]) -> None:
    """QCFractal can be configured from the environment alone; without that or a file its message is obscure."""
    path = _config_path(argv)
    if path is None and "QCF_BASE_FOLDER" not in os.environ:
        raise InputError("give the QCFractal server configuration with --config PATH (or set QCF_CONFIG_PATH).")
    if path is not None and not os.path.isfile(path):
        raise InputError(f"QCFractal configuration {path} does not exist; create it with `{PROG} init-config`.")


def _check(argv: list[str]) -> None:
    from qcmb_fractal.plugin.server.config import plugin_config

    config = _config(argv)
    check_startup(config.database)
    print(
        f"qcmb-fractal plugin ready in {config.database.safe_uri} (QCFractal {qcfractal.__version__}, "
        f"max_children_per_record {plugin_config(config).max_children_per_record:,})"
    )


def _write_config_section(argv: list[str]) -> None:
    """Append the plugin's section, with each setting's documentation, to a configuration init-config wrote."""
    import yaml

    from qcmb_fractal.plugin.server.config import CONFIG_SECTION, QCMBServerConfig

    path = _config_path(argv)
    assert path is not None, "QCFractal's init-config requires --config"
    lines = [f"# qcmb-fractal plugin ({RECORD_TYPE} records)", f"{CONFIG_SECTION}:"]
    for name, field in QCMBServerConfig.model_fields.items():
        lines += [f"  # {line.strip()}" for line in (field.description or "").splitlines()]
        lines.append(f"  {yaml.safe_dump({name: getattr(QCMBServerConfig(), name)}).strip()}")
    with open(path, "a") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"Added the qcmb-fractal plugin's {CONFIG_SECTION} section to {path}")


def _ready(argv: list[str]) -> None:
    config = _config(argv)
    check_startup(config.database)
    print(f"qcmb-fractal plugin ready in {config.database.safe_uri}")


def _checked(argv: list[str]) -> None:
    check_startup(_config(argv).database)


BEFORE: dict[str, Callable[[list[str]], None]] = dict.fromkeys(("start", "start-api", "start-job-runner"), _checked)
AFTER: dict[str, Callable[[list[str]], None]] = {
    "init-config": _write_config_section,
    "init-db": _ready,
    "upgrade-db": _ready,
}


def _run_qcfractal(command: str, argv: list[str]) -> int:
    from qcfractal import qcfractal_server_cli

    wants_help = any(arg in HELP_FLAGS for arg in argv)
    if not wants_help and command != "init-config":
        _needs_config(argv)
    if not wants_help and command in BEFORE:
        BEFORE[command](argv)
    sys.argv = [PROG, *argv]
    try:
        qcfractal_server_cli.main()
    except SystemExit as done:  # QCFractal ends some commands with exit(0)
        if done.code not in (0, None) or wants_help:
            raise
    if not wants_help and command in AFTER:
        AFTER[command](argv)
    return 0


def _children_import_this_module() -> None:
    """Make spawned server processes re-import this module (and so load the plugin) as their main."""
    main_module = sys.modules["__main__"]
    main_module.__spec__ = importlib.util.find_spec(__name__)


def _operator_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the operator must change something (QCFractal raises RuntimeError for most)."""
    import psycopg2
    import yaml
    from sqlalchemy.exc import SQLAlchemyError

    return (RuntimeError, ValueError, OSError, yaml.YAMLError, SQLAlchemyError, psycopg2.Error)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(arg == "--verbose" or (arg.startswith("-v") and set(arg[1:]) == {"v"}) for arg in argv)
    parser = build_parser()
    args, _ = parser.parse_known_args(argv)  # --help and --version end here, before anything runs
    try:
        activate()
        _children_import_this_module()
        if args.command == "check":
            parser.parse_args(argv)  # nothing may be left over
            _check(argv)
            return 0
        return _run_qcfractal(args.command, argv)
    except (PluginStartupError, InputError) as err:
        message = str(err)
    except _operator_errors() as err:
        if verbose:
            raise
        message = f"{err}\n(run with -v to see the traceback)"
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__mp_main__":  # a server process spawned by `start` from a source checkout
    activate()
