"""Fault injection for the local backend's tests: a ``fault_nwchem`` shim in front of the real NWChem.

The shim is a shell script named ``nwchem`` in a ``fault-*`` directory put first on PATH; it injects one
fault (a kill, a crash, a hang) when its condition holds and otherwise runs the real program. Processes
of a faulted run carry a tag in their environment, so a test can prove nothing was left running.
"""

import os
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from qcmb_fractal.execute import Checkpoint, Runner
from qcmb_fractal.execute.backends.local import LocalBackend
from qcmb_fractal.execute.pool import SCRATCH_PREFIX
from qcmb_fractal.plan import Plan, plain_input

WATER_DIMER = {
    "symbols": ["O", "H", "H", "O", "H", "H"],
    "geometry": [
        -1.551007,
        -0.114520,
        0.000000,
        -1.934259,
        0.762503,
        0.000000,
        -0.599677,
        0.040712,
        0.000000,
        1.350625,
        0.111469,
        0.000000,
        1.680398,
        -0.373741,
        -0.758561,
        1.680398,
        -0.373741,
        0.758561,
    ],
    "fragments": [[0, 1, 2], [3, 4, 5]],
}
PROPERTIES = (
    "nocp_corrected_total_energy_through_2_body",
    "nocp_corrected_interaction_energy_through_2_body",
    "cp_corrected_interaction_energy_through_2_body",
)


def dimer_plan() -> Plan:
    mol = {**WATER_DIMER, "geometry": [x / 0.52917721067 for x in WATER_DIMER["geometry"]]}
    return Plan(plain_input(mol, program="nwchem", method="hf", basis="sto-3g", bsse=["nocp", "cp"]))


@dataclass
class FaultShim:
    """A ``nwchem`` in front of the real one that injects ``fault`` when ``condition`` holds."""

    bindir: Path
    calls: Path
    tag: str

    @property
    def n_calls(self) -> int:
        return len(self.calls.read_text().splitlines()) if self.calls.exists() else 0


FIRST_CALL = 'mkdir "$STATE/fired" 2>/dev/null'  # atomic: exactly one calculation gets the fault
GHOST_CALL = "grep -qs ^bq nwchem.nw"  # counterpoise calculations: ghost atoms are bq* geometry lines


def install_fault_nwchem(tmp_path: Path, monkeypatch, fault: str, condition: str = FIRST_CALL) -> FaultShim:
    """Put a fault_nwchem shim first on PATH and tag this test's processes so leftovers can be found."""
    real = subprocess.run(["which", "nwchem"], capture_output=True, text=True, check=True).stdout.strip()
    bindir = tmp_path / "fault-nwchem-bin"
    state = tmp_path / "fault-state"
    bindir.mkdir()
    state.mkdir()
    calls = tmp_path / "calls.txt"
    shim = bindir / "nwchem"
    shim.write_text(
        "#!/bin/sh\n"
        "# fault_nwchem: test double that injects a fault, then runs the real NWChem\n"
        f'STATE="{state}"\n'
        f'[ "$1" = v.nw ] && exec {real} "$@"\n'
        f'echo call >> "{calls}"\n'
        f"if {condition}; then\n  {fault}\nfi\n"
        f'exec {real} "$@"\n'
    )
    shim.chmod(0o755)
    tag = uuid.uuid4().hex
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("QCMB_FAULT_TAG", tag)
    return FaultShim(bindir, calls, tag)


def _is_multiprocessing_helper(proc: Path) -> bool:
    """multiprocessing's resource tracker and fork server belong to this (pytest) process and exit with it.

    Workers forked from the fork server show its command line too, so the server is told apart by its parent.
    """
    try:
        cmdline = (proc / "cmdline").read_bytes()
        parent = int((proc / "stat").read_text().split(") ")[-1].split()[1])
    except OSError:
        return False
    if b"multiprocessing.resource_tracker" in cmdline:
        return True
    return b"multiprocessing.forkserver" in cmdline and parent == os.getpid()


def tagged_processes(tag: str) -> list[int]:
    """Live processes (other than this one) started under ``tag``: workers, NWChem, injected sleeps."""
    found = []
    needle = f"QCMB_FAULT_TAG={tag}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().split(") ")[-1][0]
        except OSError:
            continue
        if needle in env.split(b"\0") and state != "Z" and not _is_multiprocessing_helper(entry):
            found.append(int(entry.name))
    return found


def assert_nothing_left(shim: FaultShim, scratch: Path) -> None:
    deadline = time.monotonic() + 10
    while tagged_processes(shim.tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = {
        pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:200] for pid in tagged_processes(shim.tag)
    }
    assert left == {}, "processes of the run are still alive"
    assert list(scratch.glob(f"{SCRATCH_PREFIX}*")) == [], "scratch left behind"


def assert_same_numbers(result, reference) -> None:
    assert result.return_result == pytest.approx(reference.return_result, abs=1e-9)
    for key in PROPERTIES:
        assert getattr(result.properties, key) == pytest.approx(getattr(reference.properties, key), abs=1e-9)


def run(plan: Plan, tmp_path: Path, **backend_options):
    scratch = tmp_path / "scratch"
    with LocalBackend(2, scratch=scratch, **backend_options) as backend:
        return Runner(plan, backend, checkpoint=Checkpoint(tmp_path / "run.sqlite"), progress=False).run()
