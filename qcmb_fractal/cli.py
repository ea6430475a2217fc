"""Command line: ``qcmb-fractal plan INPUT``, ``run INPUT --backend NAME``, ``show RESULT`` and ``plot RESULT``.

Every user-fixable problem ends in one line on stderr and exit code 2; ``--debug`` shows the traceback.
"""

import argparse
import json
import logging
import multiprocessing
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from qcmanybody.models.v2 import ManyBodyInput

from qcmb_fractal import __version__, report
from qcmb_fractal.errors import InputError, RunFailed
from qcmb_fractal.logs import LogSettings, configure_logging
from qcmb_fractal.outputs import check_output_paths, write_output
from qcmb_fractal.plan.planner import MAX_TASKS
from qcmb_fractal.plan.screening import DEFAULT_CONTACT, DEFAULT_THRESHOLD, ScreeningReport, settings_from_dict
from qcmb_fractal.report import energy_table

logger = logging.getLogger("qcmb_fractal")

EXIT_INPUT = 2
EXIT_FAILED = 3
EXIT_INTERRUPTED = 130


def _input_arguments(p: argparse.ArgumentParser, *, many: bool = False) -> None:
    what = "ManyBodyInput (.json/.yaml, QCSchema v2) or a plain molecule file ('--' between fragments)"
    if many:
        what += "; several files or a directory run as one campaign on one pool (docs/campaigns.md)"
    p.add_argument("input", nargs="+" if many else None, help=what)
    g = p.add_argument_group("for plain molecule files")
    g.add_argument("--program", help="QCEngine program, e.g. nwchem or xtb")
    g.add_argument("--method", help="e.g. hf, mp2, gfn2-xtb")
    g.add_argument("--basis", help="e.g. sto-3g (omit for semi-empirical methods)")
    g.add_argument("--bsse", nargs="+", choices=["nocp", "cp", "vmfc"], help="BSSE treatments (default nocp)")
    g.add_argument("--max-nbody", type=int, help="highest n-body order (default: all fragments)")
    g.add_argument("--driver", choices=["energy", "gradient", "hessian"], help="default energy")
    s = p.add_argument_group("screening (docs/screening.md)")
    s.add_argument(
        "--screen",
        metavar="PROGRAM/METHOD[/BASIS]",
        help="screen subsystems bottom-up with this cheap model chemistry, e.g. xtb/gfn1-xtb; nocp only",
    )
    s.add_argument(
        "--screen-threshold",
        type=float,
        metavar="KCAL",
        help=f"keep a candidate whose screening increment is at least this, in kcal/mol (default {DEFAULT_THRESHOLD})",
    )
    s.add_argument(
        "--screen-distance",
        type=float,
        metavar="ANGSTROM",
        help="only subsystems whose every pair of fragments has atoms this close are candidates (default: no cut-off)",
    )
    s.add_argument(
        "--screen-contact",
        type=float,
        metavar="ANGSTROM",
        help=f"pairs with atoms this close are kept whatever the screening says (default {DEFAULT_CONTACT}; 0: none)",
    )
    p.add_argument(
        "--max-tasks",
        type=int,
        default=MAX_TASKS,
        help=f"refuse inputs needing more fragment calculations than this (default {MAX_TASKS:,}; ~10 KB each)",
    )


def build_parser() -> argparse.ArgumentParser:
    from qcmb_fractal.execute import add_backend_arguments, backend_names

    parser = argparse.ArgumentParser(prog="qcmb-fractal", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"qcmb-fractal {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    plan = sub.add_parser("plan", help="list the fragment calculations an input needs, per level and model chemistry")
    _input_arguments(plan)
    plan.add_argument("--json", action="store_true", help="print the counts as JSON")

    run = sub.add_parser("run", help="run a many-body expansion")
    _input_arguments(run, many=True)
    run.add_argument(
        "--summary",
        help="campaign: CSV of every input's total and interaction energies (default: campaign-summary.csv here)",
    )
    run.add_argument("--backend", default="local", choices=backend_names(), help="where calculations run")
    run.add_argument("-o", "--output", help="result JSON (default: INPUT-STEM.result.json in this directory)")
    run.add_argument("--checkpoint", help="SQLite file of finished calculations (default: next to the output)")
    run.add_argument("--no-checkpoint", action="store_true", help="keep finished calculations in memory only")
    run.add_argument(
        "--mode",
        choices=["eager", "levels"],
        default="eager",
        help="eager: every level at once, largest first (fastest); levels: level n only after n-1",
    )
    run.add_argument("--max-attempts", type=int, default=3, help="tries per calculation before it counts as failed")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument(
        "--log-file", help="append log records of the driver and every worker or rank here (INFO and up, or -vv)"
    )
    run.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="json: one object per line (file and stderr)"
    )
    add_backend_arguments(run)
    report.add_commands(sub)
    return parser


def _options(args: argparse.Namespace) -> dict:
    return {
        "program": args.program,
        "method": args.method,
        "basis": args.basis,
        "bsse": args.bsse,
        "max_nbody": args.max_nbody,
        "driver": args.driver,
    }


def load_screened_input(args: argparse.Namespace) -> ManyBodyInput:
    """The input file plus the command line's screening options, which replace the file's own."""
    from qcmb_fractal.plan import ScreeningSettings, load_input, screening_settings, with_screening

    inp = load_input(args.input, **_options(args))
    options = {"threshold": args.screen_threshold, "distance": args.screen_distance, "contact": args.screen_contact}
    changes = {k: v for k, v in options.items() if v is not None}
    if args.screen:
        return with_screening(inp, ScreeningSettings.from_model_string(args.screen, **changes))
    if changes:
        current = screening_settings(inp)
        if current is None:
            raise InputError(
                "--screen-threshold, --screen-distance and --screen-contact need --screen PROGRAM/METHOD (e.g. "
                "--screen xtb/gfn1-xtb) or screening settings in the input file."
            )
        return with_screening(inp, settings_from_dict({**current.model_dump(), **changes}))
    return inp


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.debug or args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING
    log_file = getattr(args, "log_file", None)
    multiprocessing.current_process().name = "driver"  # records name their process; backends rename ranks
    settings = LogSettings(
        level=level,
        file=str(Path(log_file).resolve()) if log_file else None,  # workers may run in another directory
        format=getattr(args, "log_format", "text"),
    )
    try:
        configure_logging(settings)
    except OSError as err:
        raise InputError(f"cannot open --log-file {log_file}: {err.strerror}; choose another path.") from None


def cmd_plan(args: argparse.Namespace) -> int:
    from qcmb_fractal.plan import make_plan, screening_settings

    plan = make_plan(load_screened_input(args), max_tasks=args.max_tasks)
    if args.json:
        summary = {"tasks": len(plan.tasks), "counts": plan.counts()}
        screening = screening_settings(plan.input)
        if screening is not None:
            summary["screening"] = screening.model_dump(mode="json")
        print(json.dumps(summary, indent=2))
    else:
        print(plan.summary())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from qcmb_fractal.cli_campaign import is_campaign, run_campaign
    from qcmb_fractal.execute import Checkpoint, Runner, backend_class
    from qcmb_fractal.execute.interrupts import deferred_interrupts
    from qcmb_fractal.plan import make_plan

    if is_campaign(args):
        return run_campaign(args)
    args.input = args.input[0]
    if args.max_attempts < 1:
        raise InputError("--max-attempts must be at least 1.")
    backend = backend_class(args.backend).from_arguments(args)
    plan = make_plan(load_screened_input(args), max_tasks=args.max_tasks)
    output = Path(args.output) if args.output else Path.cwd() / f"{Path(args.input).stem}.result.json"
    checkpoint_path = None
    if not args.no_checkpoint:
        checkpoint_path = Path(args.checkpoint or output.with_name(output.name.removesuffix(".json") + ".sqlite"))
    check_output_paths(Path(args.input), output, checkpoint_path)
    checkpoint = Checkpoint(checkpoint_path) if checkpoint_path is not None else None
    logger.info("%d fragment calculations planned", len(plan.tasks))
    # a batch system's SIGTERM (time limit, scancel) stops the run like Ctrl-C: workers ended, scratch gone
    try:
        with deferred_interrupts(), backend:
            result = Runner(
                plan,
                backend,
                checkpoint=checkpoint,
                mode=args.mode,
                max_attempts=args.max_attempts,
                progress=False if args.no_progress else None,
            ).run()
    except KeyboardInterrupt:
        saved = f"; {len(checkpoint)} finished calculations are saved in {checkpoint.path}" if checkpoint else ""
        print(f"\ninterrupted{saved}. Run the same command again to continue.", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if checkpoint is not None:
            checkpoint.close()
    write_output(output, result.model_dump_json(indent=1), checkpoint=checkpoint_path)
    stats = result.extras["qcmb_fractal"]
    print(energy_table(result))
    if "screening" in stats:
        print("\n" + ScreeningReport.model_validate(stats["screening"]).table())
    util = f", utilization {stats['utilization']:.0%}" if stats.get("utilization") is not None else ""
    where = f"{stats['workers']} {args.backend} workers" if stats["workers"] else f"the {args.backend} backend"
    print(
        f"\n{stats['tasks']} calculations ({stats['computed']} computed, {stats['reused']} from checkpoint) "
        f"in {stats['wall_time']:.1f} s on {where}{util}"
    )
    print(f"result written to {output}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _configure_logging(args)
        if args.command == "plan":
            return cmd_plan(args)
        if args.command == "run":
            return cmd_run(args)
        return args.handler(args)
    except InputError as err:
        if args.debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except RunFailed as err:
        if args.debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("\ninterrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
