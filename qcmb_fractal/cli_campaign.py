"""``qcmb-fractal run A.json B.json ...`` (or a directory): a campaign on one warm pool.

Each input gets the result file and checkpoint a single run of it would (``INPUT-STEM.result.json`` and
``INPUT-STEM.result.sqlite`` here), so rerunning the same command resumes every input as a single run does, and
a summary CSV of every input's energies. A bad input costs one line on stderr; the others still run.
"""

import argparse
import sys
from pathlib import Path

from qcmanybody.models.v2 import ManyBodyResult

from qcmb_fractal.cli import EXIT_FAILED, EXIT_INPUT, EXIT_INTERRUPTED, load_screened_input
from qcmb_fractal.errors import InputError, RunFailed
from qcmb_fractal.execute import Checkpoint, backend_class
from qcmb_fractal.execute.campaign import Campaign, Member, MemberOutcome, summary_csv
from qcmb_fractal.execute.interrupts import deferred_interrupts
from qcmb_fractal.outputs import check_output_paths, write_output
from qcmb_fractal.plan import make_plan
from qcmb_fractal.plan.inputs import installed_programs

INPUT_SUFFIXES = (".json", ".yaml", ".yml")
DEFAULT_SUMMARY = "campaign-summary.csv"
CAMPAIGN_BACKENDS = ("local", "mpi")


def campaign_paths(names: list[str]) -> list[Path]:
    """The input files named, a directory standing for its .json/.yaml inputs (not results); each file once."""
    paths: list[Path] = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.suffix.lower() in INPUT_SUFFIXES and not p.name.endswith(".result.json")
            )
            if not found:
                raise InputError(f"directory {path} holds no .json/.yaml inputs; name the input files instead.")
            paths.extend(found)
        else:
            paths.append(path)
    unique: dict[Path, Path] = {}
    for path in paths:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def is_campaign(args: argparse.Namespace) -> bool:
    """Several inputs, a directory, or a summary asked for; one input file alone is a single run, as ever."""
    return len(args.input) > 1 or Path(args.input[0]).is_dir() or args.summary is not None


def _check_names(args: argparse.Namespace, paths: list[Path]) -> Path:
    if args.output or args.checkpoint:
        raise InputError(
            "-o/--output and --checkpoint name one input's files; a campaign writes INPUT-STEM.result.json and "
            "INPUT-STEM.result.sqlite per input in this directory (use --summary for the table's path)."
        )
    stems: dict[str, Path] = {}
    for path in paths:
        if path.stem in stems:
            raise InputError(
                f"{stems[path.stem]} and {path} would both write {path.stem}.result.json; rename one of them."
            )
        stems[path.stem] = path
    summary = Path(args.summary or DEFAULT_SUMMARY)
    if summary.is_dir() or not summary.parent.is_dir():
        raise InputError(f"--summary {summary} is a directory or in one that does not exist; give a .csv file name.")
    return summary


def _member(args: argparse.Namespace, path: Path, installed: list[str] | None) -> Member:
    """Load and plan one input as a single run would; InputError says what is wrong with it."""
    inp = load_screened_input(argparse.Namespace(**{**vars(args), "input": str(path)}))
    plan = make_plan(inp, max_tasks=args.max_tasks)
    if installed is not None:
        missing = sorted({e["program"].lower() for e in plan.builder.specifications.values()} - set(installed))
        if missing:
            raise InputError(f"program {', '.join(missing)} is not installed on this machine; install it.")
    output = Path.cwd() / f"{path.stem}.result.json"
    checkpoint_path = None if args.no_checkpoint else output.with_name(f"{path.stem}.result.sqlite")
    check_output_paths(path, output, checkpoint_path)
    checkpoint = Checkpoint(checkpoint_path) if checkpoint_path is not None else None
    return Member(name=str(path), plan=plan, output=output, checkpoint=checkpoint)


def run_campaign(args: argparse.Namespace) -> int:
    paths = campaign_paths(args.input)
    summary = _check_names(args, paths)
    if args.backend not in CAMPAIGN_BACKENDS:
        raise InputError(f"several inputs run on the {' or '.join(CAMPAIGN_BACKENDS)} backend; run them one by one.")
    backend = backend_class(args.backend).from_arguments(args)
    installed = installed_programs() if args.backend == "local" else None  # MPI ranks may have other programs
    outcomes: dict[str, MemberOutcome] = {}
    members: list[Member] = []
    for path in paths:
        try:
            members.append(_member(args, path, installed))
        except InputError as err:
            print(f"error: {path}: {err}", file=sys.stderr)
            outcomes[str(path)] = MemberOutcome(name=str(path), status="bad input", error=str(err))
            continue
        outcomes[str(path)] = MemberOutcome(name=str(path), output=members[-1].output)

    def finished(member: Member, result: ManyBodyResult | None, failure: RunFailed | None) -> None:
        outcome = outcomes[member.name]
        if result is None:
            print(f"error: {member.name}: {failure}", file=sys.stderr)
            outcome.status, outcome.error = "failed", str(failure)
            return
        kept = member.checkpoint.path if member.checkpoint else None
        try:
            write_output(member.output, result.model_dump_json(indent=1), checkpoint=kept)
        except InputError as err:
            print(f"error: {member.name}: {err}", file=sys.stderr)
            outcome.status, outcome.error = "failed", str(err)
            return
        outcome.result = result
        stats = result.extras["qcmb_fractal"]
        print(
            f"{member.name}: {stats['tasks']} calculations ({stats['computed']} computed, {stats['reused']} from "
            f"checkpoint) -> {member.output}"
        )

    try:
        if members:
            with deferred_interrupts(), backend:
                Campaign(
                    members,
                    backend,
                    mode=args.mode,
                    max_attempts=args.max_attempts,
                    progress=False if args.no_progress else None,
                    on_finished=finished,
                ).run()
    except KeyboardInterrupt:
        saved = "" if args.no_checkpoint else "; finished calculations are saved in each input's .result.sqlite"
        print(f"\ninterrupted{saved}. Run the same command again to continue.", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        for member in members:
            if member.checkpoint is not None:
                member.checkpoint.close()
    write_output(summary, summary_csv(outcomes.values()))
    ok = sum(o.status == "ok" for o in outcomes.values())
    print(f"\n{ok} of {len(outcomes)} inputs finished; summary written to {summary}")
    if any(o.status == "failed" for o in outcomes.values()):
        return EXIT_FAILED
    return EXIT_INPUT if ok < len(outcomes) else 0
