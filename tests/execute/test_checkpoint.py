"""Checkpoint: results survive as written; damaged rows and corrupted files are recomputed, not trusted."""

import sqlite3
from pathlib import Path

import pytest

from qcmb_fractal.drive import ComponentProperties
from qcmb_fractal.execute import Checkpoint, TaskOutcome
from qcmb_fractal.plan import Plan
from qcmb_fractal.testing.fakes import fake_atomic_result
from qcmb_fractal.testing.molecules import water_cluster
from qcmb_fractal.testing.reference import NWCHEM_HF, mbe_input


@pytest.fixture(scope="module")
def plan() -> Plan:
    return Plan(mbe_input(water_cluster(3), {"hf": NWCHEM_HF}, {2: "hf"}, bsse=["nocp"]))


def outcome(plan: Plan, i: int) -> TaskOutcome:
    task = plan.tasks[i]
    result = fake_atomic_result(plan, task, energy=-76.0 - i)
    return TaskOutcome(hash=task.hash, success=True, result=result, worker=f"w{i}", wall_time=0.5 + i)


def test_put_and_load_round_trip(tmp_path: Path, plan: Plan) -> None:
    path = tmp_path / "sub" / "run.sqlite"
    ck = Checkpoint(path)
    for i in range(3):
        ck.put(outcome(plan, i), plan.tasks[i].label)
    ck.put(outcome(plan, 0), plan.tasks[0].label)  # a rerun result replaces, never duplicates
    assert len(ck) == 3
    ck.close()
    again = Checkpoint(path)
    wanted = {plan.tasks[0].hash, plan.tasks[2].hash, plan.tasks[5].hash}
    loaded = again.load(wanted)
    assert set(loaded) == {plan.tasks[0].hash, plan.tasks[2].hash}
    got = loaded[plan.tasks[2].hash]
    assert got.success and got.worker == "w2" and got.wall_time == 2.5
    assert got.result == outcome(plan, 2).result


def test_results_are_committed_in_batches_and_properties_alone_are_enough(tmp_path: Path, plan: Plan) -> None:
    path = tmp_path / "run.sqlite"
    ck = Checkpoint(path, commit_seconds=3600)
    assert ck.due_in() is None
    ck.put(outcome(plan, 0), plan.tasks[0].label)  # the first result is committed at once
    assert ck.due_in() is None
    slim = TaskOutcome(hash=plan.tasks[1].hash, success=True, properties=ComponentProperties(energy=-75.5))
    ck.put(slim, plan.tasks[1].label)
    assert 3590 < ck.due_in() <= 3600
    other = sqlite3.connect(path)
    assert other.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 1  # the second waits: a SIGKILL loses it
    ck.commit_seconds = 0.0
    ck.commit_if_due()
    assert ck.due_in() is None and other.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 2
    rows = dict(other.execute("SELECT hash, length(result) FROM results"))
    assert rows[plan.tasks[1].hash] < 100 < rows[plan.tasks[0].hash] < len(outcome(plan, 0).result.model_dump_json())
    loaded = ck.load({plan.tasks[0].hash, plan.tasks[1].hash})
    assert loaded[plan.tasks[1].hash].result is None and loaded[plan.tasks[1].hash].properties.energy == -75.5
    assert loaded[plan.tasks[0].hash].properties.energy == outcome(plan, 0).result.properties.return_energy


def test_rows_of_earlier_versions_still_load(tmp_path: Path, plan: Plan) -> None:
    """Uncompressed AtomicResult JSON text, as written before rows were compressed."""
    import hashlib

    ck = Checkpoint(tmp_path / "run.sqlite")
    text = outcome(plan, 0).result.model_dump_json()
    ck.db.execute(
        "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?)",
        (plan.tasks[0].hash, "label", "w0", 0.5, 0.0, hashlib.sha256(text.encode()).hexdigest(), text),
    )
    assert ck.load({plan.tasks[0].hash})[plan.tasks[0].hash].result == outcome(plan, 0).result


def test_only_results_are_stored(tmp_path: Path, plan: Plan) -> None:
    failed = TaskOutcome(hash=plan.tasks[0].hash, success=False, error="boom")
    with pytest.raises(ValueError, match="only successful outcomes"):
        Checkpoint(tmp_path / "c.sqlite").put(failed, "label")


@pytest.mark.parametrize("damage", ["digest", "json"])
def test_damaged_row_is_dropped_and_recomputed(tmp_path: Path, plan: Plan, damage: str) -> None:
    path = tmp_path / "run.sqlite"
    ck = Checkpoint(path)
    for i in range(2):
        ck.put(outcome(plan, i), plan.tasks[i].label)
    if damage == "digest":  # a torn write: the blob no longer matches its digest
        ck.db.execute("UPDATE results SET result = substr(result, 1, 100) WHERE hash = ?", (plan.tasks[0].hash,))
    else:  # digest fine, content not an AtomicResult
        import hashlib

        blob = '{"not": "a result"}'
        ck.db.execute(
            "UPDATE results SET result = ?, digest = ? WHERE hash = ?",
            (blob, hashlib.sha256(blob.encode()).hexdigest(), plan.tasks[0].hash),
        )
    ck.db.commit()
    loaded = ck.load({t.hash for t in plan.tasks})
    assert set(loaded) == {plan.tasks[1].hash}
    assert len(ck) == 1  # the damaged row is gone, so the rerun stores a fresh one


def test_corrupted_file_is_moved_aside(tmp_path: Path, plan: Plan) -> None:
    path = tmp_path / "run.sqlite"
    ck = Checkpoint(path)
    ck.put(outcome(plan, 0), plan.tasks[0].label)
    ck.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(b"this is not a database" * 100)
    fresh = Checkpoint(path)
    assert len(fresh) == 0
    aside = list(tmp_path.glob("run.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    fresh.put(outcome(plan, 1), plan.tasks[1].label)
    assert set(fresh.load({plan.tasks[1].hash})) == {plan.tasks[1].hash}
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(aside[0]).execute("SELECT * FROM results").fetchall()


def test_unusable_paths_are_input_errors_and_leave_the_file_alone(tmp_path: Path) -> None:
    from qcmb_fractal.errors import InputError

    with pytest.raises(InputError, match="is a directory; give a file name such as"):
        Checkpoint(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="cannot create the checkpoint's directory"):
        Checkpoint(tmp_path / "file" / "run.sqlite")
    # a directory only once its parent exists: SQLite cannot open it, and nothing is moved aside
    with pytest.raises(InputError, match=r"cannot use checkpoint .*unable to open database file"):
        Checkpoint(tmp_path / "new" / "..")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "new"]
