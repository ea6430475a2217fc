"""Faults met through the command line: interrupts, a dying driver, damaged checkpoints, unusable paths.

Each run is a real ``qcmb-fractal run`` subprocess; its processes carry a tag in their environment so a
test can prove none is left running, and ``--scratch`` points into the test's directory so leftovers show.
"""

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from qcmanybody.v2.computer import ManyBodyComputer

from qcmb_fractal.errors import InputError
from qcmb_fractal.execute.pool import SCRATCH_PREFIX
from qcmb_fractal.outputs import write_output
from qcmb_fractal.plan import load_input
from qcmb_fractal.testing.local_faults import install_fault_nwchem, tagged_processes
from qcmb_fractal.testing.programs import needs_nwchem

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CLI = [sys.executable, "-m", "qcmb_fractal.cli"]
TRIMER = EXAMPLES / "water3-nwchem-hf-cp.json"
XTB_ARGS = ["--program", "xtb", "--method", "gfn2-xtb", "--max-nbody", "2"]


class Job:
    """One CLI invocation with its own tag, scratch and output, run again as often as a test needs."""

    def __init__(self, tmp_path: Path, input_path: Path, *extra: str) -> None:
        self.tmp = tmp_path
        self.tag = uuid.uuid4().hex
        self.scratch = tmp_path / "scratch"
        self.output = tmp_path / "result.json"
        self.checkpoint = tmp_path / "result.sqlite"
        self.cmd = [*CLI, "run", str(input_path), "--workers", "2", "--no-progress"]
        self.cmd += ["--scratch", str(self.scratch), "-o", str(self.output), *extra]
        self.env = {**os.environ, "QCMB_FAULT_TAG": self.tag}

    def run(self, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self.cmd, *extra], cwd=self.tmp, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def start(self) -> subprocess.Popen:
        """Started as a terminal starts a job: its own process group, Ctrl-C not ignored (even if this test
        run inherited an ignored SIGINT, as under nohup or in a background job)."""
        return subprocess.Popen(
            self.cmd,
            cwd=self.tmp,
            env=self.env,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )

    def saved(self) -> int:
        try:
            with sqlite3.connect(self.checkpoint) as db:
                return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        except sqlite3.Error:
            return 0

    def wait_until_saved(self, proc: subprocess.Popen, n: int) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None and self.saved() < n:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before the fault could be injected"

    def stats(self) -> dict:
        return json.loads(self.output.read_text())["extras"]["qcmb_fractal"]

    def assert_nothing_left(self) -> None:
        deadline = time.monotonic() + 15
        while tagged_processes(self.tag) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert tagged_processes(self.tag) == [], "workers or programs outlived the run"
        assert list(self.scratch.glob(f"{SCRATCH_PREFIX}*")) == [], "scratch left behind"
        assert [p.name for p in self.tmp.glob(".*.tmp")] == [], "temporary output left behind"


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def trimer_reference():
    return ManyBodyComputer.from_manybodyinput(load_input(TRIMER))


def assert_trimer_numbers(output: Path, reference) -> None:
    result = json.loads(output.read_text())
    assert result["return_result"] == pytest.approx(reference.return_result, abs=1e-9)
    for key in ("cp_corrected_interaction_energy_through_3_body", "nocp_corrected_total_energy_through_3_body"):
        assert result["properties"][key] == pytest.approx(getattr(reference.properties, key), abs=1e-9)


@pytest.mark.slow
@pytest.mark.nwchem
@needs_nwchem
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_saves_exits_130_and_rerun_finishes(tmp_path, trimer_reference, sig):
    """Ctrl-C as a terminal sends it (to the whole foreground group), or a batch system's SIGTERM."""
    job = Job(tmp_path, TRIMER)
    proc = job.start()
    job.wait_until_saved(proc, 3)
    os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    saved = int(re.search(r"(\d+) finished calculations are saved", stderr).group(1))
    assert saved == job.saved() >= 3
    assert "Traceback" not in stderr
    job.assert_nothing_left()

    rerun = job.run()
    assert rerun.returncode == 0, rerun.stderr
    assert (job.stats()["reused"], job.stats()["computed"]) == (saved, 13 - saved)
    assert_trimer_numbers(job.output, trimer_reference)
    job.assert_nothing_left()


@pytest.mark.slow
@pytest.mark.nwchem
@needs_nwchem
def test_driver_sigkilled_alone_takes_its_workers_down(tmp_path, monkeypatch, trimer_reference):
    """The OOM killer picks the driver, not its group: workers and a long calculation must not run on."""
    real_path = os.environ["PATH"]
    install_fault_nwchem(
        tmp_path, monkeypatch, "exec sleep 600", condition='[ "$(wc -l < "$STATE/../calls.txt")" -ge 4 ]'
    )
    job = Job(tmp_path, TRIMER)
    proc = job.start()
    job.wait_until_saved(proc, 3)
    deadline = time.monotonic() + 60
    while not _sleeping(job.tag) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sleeping(job.tag), "no calculation hung as injected"
    proc.kill()
    proc.communicate(timeout=60)
    saved = job.saved()
    deadline = time.monotonic() + 15
    while tagged_processes(job.tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tagged_processes(job.tag) == []

    job.env["PATH"] = real_path
    rerun = job.run()  # sweeps the dead run's scratch
    assert rerun.returncode == 0, rerun.stderr
    assert job.stats()["reused"] == saved
    assert_trimer_numbers(job.output, trimer_reference)
    job.assert_nothing_left()


@pytest.mark.slow
@pytest.mark.nwchem
@needs_nwchem
def test_scratch_removed_mid_run_stops_with_a_message_and_rerun_finishes(tmp_path, trimer_reference):
    """A cleaner of /tmp (or a user) removes the run's scratch while calculations run in it."""
    job = Job(tmp_path, TRIMER)
    proc = job.start()
    job.wait_until_saved(proc, 3)
    shutil.rmtree(next(job.scratch.glob(f"{SCRATCH_PREFIX}*")))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    assert "was removed during the run" in stderr and "Traceback" not in stderr
    saved = job.saved()
    job.assert_nothing_left()

    rerun = job.run()
    assert rerun.returncode == 0, rerun.stderr
    assert job.stats()["reused"] == saved >= 3
    assert_trimer_numbers(job.output, trimer_reference)


def _sleeping(tag: str) -> bool:
    return any(b"sleep" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in tagged_processes(tag))


@pytest.fixture(scope="module")
def xtb_reference(tmp_path_factory):
    """An uninterrupted xtb water-hexamer MBE(2) through the CLI, and its checkpoint to damage."""
    job = Job(tmp_path_factory.mktemp("xtb-reference"), EXAMPLES / "water6.xyz", *XTB_ARGS)
    done = job.run()
    assert done.returncode == 0, done.stderr
    serial = ManyBodyComputer.from_manybodyinput(
        load_input(EXAMPLES / "water6.xyz", program="xtb", method="gfn2-xtb", max_nbody=2)
    )
    result = json.loads(job.output.read_text())
    assert result["return_result"] == pytest.approx(serial.return_result, abs=1e-9)
    return result, job.checkpoint.read_bytes()


def damaged_checkpoint(tmp_path: Path, data: bytes, damage: str) -> int:
    """Write the reference checkpoint damaged in one way; returns how many rows should survive."""
    path = tmp_path / "result.sqlite"
    path.write_bytes(data)
    with sqlite3.connect(path) as db:
        total = db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        if damage == "one-row-tampered":
            blob = bytearray(db.execute("SELECT result FROM results WHERE rowid = 1").fetchone()[0])
            blob[len(blob) // 2] ^= 0xFF  # one byte flipped in place
            db.execute("UPDATE results SET result = ? WHERE rowid = 1", (bytes(blob),))
        elif damage == "one-row-garbage-with-digest":
            db.execute("UPDATE results SET result = '{not json', digest = ? WHERE rowid = 2", (_sha("{not json"),))
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
        return 0
    if damage == "garbage":
        path.write_bytes(os.urandom(len(data)))
        return 0
    if damage == "empty":
        path.write_bytes(b"")
        return 0
    return total - 1


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("damage", ["one-row-tampered", "one-row-garbage-with-digest", "truncated", "garbage", "empty"])
def test_damaged_checkpoint_is_recovered_through_the_cli(tmp_path, xtb_reference, damage):
    reference, data = xtb_reference
    survive = damaged_checkpoint(tmp_path, data, damage)
    job = Job(tmp_path, EXAMPLES / "water6.xyz", *XTB_ARGS)
    done = job.run()
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    stats = job.stats()
    assert (stats["reused"], stats["computed"]) == (survive, stats["tasks"] - survive)
    result = json.loads(job.output.read_text())
    assert result["return_result"] == pytest.approx(reference["return_result"], abs=1e-12)
    for key, value in reference["properties"].items():
        if isinstance(value, float):
            assert result["properties"][key] == pytest.approx(value, abs=1e-12), key
    if survive == 0 and damage != "empty":
        assert "moved to" in done.stderr
        assert len(list(tmp_path.glob("result.sqlite.corrupt-*"))) == 1, "the damaged file is kept, not deleted"
    elif survive:
        assert "will be recomputed" in done.stderr
    job.assert_nothing_left()


@pytest.fixture
def read_only_dir(tmp_path):
    where = tmp_path / "read-only"
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {proc.stderr.decode().strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_unwritable_output_and_scratch_are_refused_before_computing(tmp_path, read_only_dir):
    job = Job(tmp_path, EXAMPLES / "water6.xyz", *XTB_ARGS)
    for extra, message in [
        (["-o", str(read_only_dir / "r.json"), "--checkpoint", str(tmp_path / "c.sqlite")], "cannot write"),
        (["--scratch", str(read_only_dir)], "not writable"),
        (["--scratch", str(read_only_dir / "sub")], "cannot create scratch directory"),
    ]:
        done = job.run(*extra)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "c.sqlite").exists() or job.saved() == 0


def test_result_that_cannot_be_written_points_at_the_checkpoint(tmp_path):
    """The disk fills up just as the result is written: a clear error, no half-written or temporary file."""
    where = tmp_path / "tiny"
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        with pytest.raises(InputError, match=r"No space left on device.*kept in .*run\.sqlite"):
            write_output(where / "result.json", "x" * 2**20, checkpoint=tmp_path / "run.sqlite")
        assert list(where.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
