"""``qcmb-fractal-compute --config manager.yaml``: the same configuration file as ``qcfractal-compute-manager``.

A configuration or connection mistake prints one line and exits 2 (``--verbose`` shows the traceback).
"""

import argparse
import logging
import os
import signal
import sys

import pydantic
import qcfractalcompute
import yaml
from qcfractalcompute.config import read_configuration
from qcportal.client_base import AllowedConnectionExceptions, PortalRequestError

import qcmb_fractal
from qcmb_fractal.compute.manager import WarmComputeManager

PROG = "qcmb-fractal-compute"
LOG_FORMAT = "[%(asctime)s] %(levelname)8s: %(name)s: %(message)s"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A QCFractal compute manager with warm workers: reads qcfractal-compute-manager's manager.yaml "
        "(executors of type 'local'), claims tasks as workers free up and runs them without a new process each.",
    )
    parser.add_argument("--config", required=True, help="the manager.yaml of qcfractal-compute-manager")
    parser.add_argument("--verbose", action="store_true", help="debug logging; tracebacks on errors")
    parser.add_argument(
        "--version",
        action="version",
        version=f"{PROG} {qcmb_fractal.__version__} (qcfractalcompute {qcfractalcompute.__version__})",
    )
    return parser


def _configure_logging(verbose: bool, level: str, logfile: str | None) -> None:
    handler: logging.Handler = logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, "%Y-%m-%d %H:%M:%S %Z"))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel("DEBUG" if verbose else level)


def main(argv: list[str] | None = None) -> int:
    """Returns 2 on a configuration or connection mistake; after a run the process exits from here."""
    args = _parser().parse_args(argv)
    _configure_logging(args.verbose, "INFO", None)  # as QCFractal's: configuration reading is logged too
    try:
        config = read_configuration([args.config])
        _configure_logging(args.verbose, config.loglevel, config.logfile)
        manager = WarmComputeManager(config)
    except AllowedConnectionExceptions as exc:  # before OSError: they are OSErrors
        if args.verbose:
            raise
        print(f"{PROG}: error: cannot reach the server ({_one_line(exc)}); check server.fractal_uri", file=sys.stderr)
        return 2
    except (OSError, yaml.YAMLError, pydantic.ValidationError, ValueError, RuntimeError, PortalRequestError) as exc:
        if args.verbose:
            raise
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2

    def stop(signum: int, _frame: object) -> None:
        logging.getLogger(__name__).info("Received %s, shutting down", signal.Signals(signum).name)
        manager.stop()

    for name in ("SIGHUP", "SIGINT", "SIGTERM"):
        signal.signal(getattr(signal, name), stop)
    manager.start()
    # Deactivated, workers ended: nothing is left to wait for. A ProcessPoolExecutor whose workers were killed
    # can leave its management thread stuck at interpreter exit (seen once in a few SIGTERMs on a loaded
    # machine), keeping a stopped manager alive until its supervisor kills it; leave without waiting for it.
    logging.shutdown()
    os._exit(0)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, pydantic.ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"manager.yaml: {where}: {first['msg']} ({exc.error_count()} problem(s) in all)"
    return " ".join(str(exc).split()) or type(exc).__name__
