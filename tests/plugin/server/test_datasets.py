"""The qcmb_manybody dataset type on the package's real QCFractal server, as a QCPortal user drives it.

A water dimer and trimer (GFN2-xTB, MBE(2)) × two specifications that differ in how the service schedules them
(eager, level by level), so the second costs no calculation of its own: its records find the first's
singlepoints. Created from a plain PortalClient, submitted, watched with status(), read back with
get_properties_df and compared with the local backend on the same inputs; then resubmitted (nothing new),
renamed and pruned. The schema upgrade of a plugin database from before the dataset tables needs no server.
"""

import time

import psycopg2
import pytest
from qcmanybody.models.v2 import ManyBodyResult
from qcportal.client_base import PortalRequestError
from qcportal.internal_jobs import InternalJobStatusEnum
from qcportal.record_models import RecordStatusEnum
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from qcmb_fractal.execute import Runner
from qcmb_fractal.execute.backends.local import LocalBackend
from qcmb_fractal.plan import make_plan
from qcmb_fractal.plugin.client import (
    QCMBDataset,
    QCMBDatasetNewEntry,
    QCMBManyBodyRecord,
    QCMBSpecification,
    add_qcmb_manybodys,
    simple_specification,
)
from qcmb_fractal.plugin.server import install
from qcmb_fractal.plugin.server.dataset_db_models import DATASET_TABLES
from qcmb_fractal.plugin.server.record_socket import validated_input
from qcmb_fractal.testing.fractal import drop_database, fresh_database, portal_molecule
from qcmb_fractal.testing.molecules import water_cluster
from qcmb_fractal.testing.programs import needs_xtb

pytestmark = needs_xtb

ENERGY_TOL = 1.0e-9
SHIFT = 31.0  # bohr: molecules no other test of the package's server submits
SPECS = {
    "eager": simple_specification(program="xtb", method="gfn2-xtb", max_nbody=2, mode="eager"),
    "levels": simple_specification(program="xtb", method="gfn2-xtb", max_nbody=2, mode="levels"),
}
ENTRIES = {"dimer": 2, "trimer": 3}


@pytest.fixture(scope="module")
def molecules():
    return {name: portal_molecule(water_cluster(n, shift=SHIFT)) for name, n in ENTRIES.items()}


@pytest.fixture(scope="module")
def local(molecules) -> dict[str, ManyBodyResult]:
    """The local backend's result for each entry (what `qcmb-fractal run` computes; the same for both modes)."""
    with LocalBackend(1) as backend:
        return {
            entry: Runner(make_plan(validated_input(mol, SPECS["eager"])), backend, progress=False).run()
            for entry, mol in molecules.items()
        }


@pytest.fixture(scope="module")
def dataset(fractal, molecules) -> QCMBDataset:
    client = fractal[1]
    ds = client.add_dataset("qcmb_manybody", "water clusters", description="dimer and trimer, MBE(2)")
    ds.add_entry("dimer", molecules["dimer"], comment="two waters", attributes={"n_waters": 2})
    trimer = QCMBDatasetNewEntry(name="trimer", initial_molecule=molecules["trimer"], attributes={"n_waters": 3})
    ds.add_entries([trimer])
    for name, spec in SPECS.items():
        ds.add_specification(name, spec, description=f"GFN2-xTB, {name} mode")
    return ds


def same_specification(got: QCMBSpecification, want: QCMBSpecification) -> bool:
    """Equal as stored (JSON turns the levels' integer keys into strings)."""
    return got.model_dump(mode="json") == want.model_dump(mode="json")


def wait_for_dataset(ds: QCMBDataset, n_records: int, timeout: float = 240.0) -> dict:
    """The dataset's status() once every record has finished; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        status = ds.status()
        counts = [n for by_status in status.values() for n in by_status.values()]
        done = {s for by_status in status.values() for s in by_status} <= {RecordStatusEnum.complete}
        if sum(counts) == n_records and done:
            return status
        assert RecordStatusEnum.error not in {s for v in status.values() for s in v}, ds.status_table()
        assert time.monotonic() < deadline, f"dataset not finished after {timeout} s:\n{ds.status_table()}"
        time.sleep(0.5)


def test_a_plain_portal_client_creates_and_finds_the_dataset_type(fractal, dataset, molecules):
    client = fractal[1]
    assert isinstance(dataset, QCMBDataset) and dataset.dataset_type == "qcmb_manybody"
    found = client.get_dataset("qcmb_manybody", "Water Clusters")  # names match case-insensitively, as QCPortal's
    assert isinstance(found, QCMBDataset) and found.id == dataset.id
    assert sorted(found.entry_names) == ["dimer", "trimer"] and sorted(found.specification_names) == sorted(SPECS)
    dimer = found.get_entry("dimer")
    assert dimer.comment == "two waters" and dimer.attributes == {"n_waters": 2}
    assert dimer.initial_molecule.get_hash() == molecules["dimer"].get_hash()
    assert isinstance(found.specifications["levels"].specification, QCMBSpecification)
    assert same_specification(found.specifications["levels"].specification, SPECS["levels"])
    again = found.add_entry("dimer", molecules["trimer"])  # an existing name is kept, as QCPortal's datasets do
    assert again.existing_idx == [0] and again.n_inserted == 0

    # a specification is stored once, whatever names datasets give it
    assert found.add_specification("eager again", SPECS["eager"]).inserted_idx == [0]
    with psycopg2.connect(fractal[0]._qcf_config.database.psycopg2_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM qcmb_manybody_specification")
        assert cur.fetchone()[0] == len(SPECS)
    conn.close()
    found.delete_specification("eager again")

    # the server's internal job runner knows the entry type too (QCPortal's way of adding thousands)
    job = dataset.background_add_entries([QCMBDatasetNewEntry(name="later", initial_molecule=molecules["dimer"])])
    job.watch(interval=0.2, timeout=60)
    assert job.status == InternalJobStatusEnum.complete, job.result
    assert client.get_dataset("qcmb_manybody", "water clusters").get_entry("later").initial_molecule.get_hash() == (
        molecules["dimer"].get_hash()
    )
    dataset.delete_entries("later")
    assert sorted(dataset.entry_names) == ["dimer", "trimer"]
    assert {d["dataset_name"] for d in client.list_datasets() if d["dataset_type"] == "qcmb_manybody"} == {
        "water clusters"
    }


def test_dataset_is_submitted_watched_and_read_as_a_table_equal_to_the_local_backend(
    fractal, dataset, molecules, local, capsys
):
    meta = dataset.submit(compute_priority="high")
    assert (meta.n_inserted, meta.n_existing) == (4, 0)
    status = wait_for_dataset(dataset, 4)
    assert status == {name: {RecordStatusEnum.complete: 2} for name in SPECS}
    dataset.print_status()
    printed = capsys.readouterr().out
    assert "eager" in printed and "levels" in printed and "complete" in printed

    again = dataset.submit()
    assert (again.n_inserted, again.n_existing) == (0, 0)
    assert dataset.record_count == 4

    energies = sorted(k for k in local["trimer"].properties.model_dump(exclude_none=True) if k.endswith("energy"))
    assert {"nocp_corrected_total_energy", "nocp_corrected_interaction_energy"} <= set(energies)
    df = dataset.get_properties_df(energies)
    assert sorted(df.index) == ["dimer", "trimer"]
    compared = 0
    for entry, reference in local.items():
        ref = reference.properties.model_dump(exclude_none=True)
        for spec_name in SPECS:
            for key in energies:
                if key in ref:
                    assert abs(df.loc[entry, (spec_name, key)] - ref[key]) < ENERGY_TOL, (entry, spec_name, key)
                    compared += 1
    assert compared >= 4 * 3

    # each pair holds its own record: the right molecule, the right specification
    records = {(e, s): r for e, s, r in dataset.iterate_records()}
    assert sorted(records) == sorted((e, s) for e in ENTRIES for s in SPECS)
    assert len({r.id for r in records.values()}) == 4
    for (entry, spec_name), rec in records.items():
        assert isinstance(rec, QCMBManyBodyRecord) and same_specification(rec.specification, SPECS[spec_name])
        assert rec.initial_molecule.get_hash() == molecules[entry].get_hash()
    # the same molecule and specification submitted as a plain record is the dataset's record, found again
    meta, (found,) = add_qcmb_manybodys(fractal[1], molecules["trimer"], SPECS["levels"])
    assert meta.existing_idx == [0] and found == records["trimer", "levels"].id
    record = dataset.get_record("trimer", "levels")
    assert record.id == records["trimer", "levels"].id and record.status == RecordStatusEnum.complete
    assert abs(record.properties["return_result"] - local["trimer"].return_result) < ENERGY_TOL
    assert sorted(r["dataset_id"] for r in fractal[1].query_dataset_records(record.id)) == [dataset.id]


def test_renames_follow_and_deleting_an_entry_deletes_only_its_records(fractal, dataset):
    client = fractal[1]
    wait_for_dataset(dataset, 4)
    ids = {(e, s): r.id for e, s, r in dataset.iterate_records()}
    dataset.rename_entries({"trimer": "w3"})
    dataset.rename_specification("levels", "by-level")
    assert dataset.get_record("w3", "by-level").id == ids["trimer", "levels"]

    # 10 waters need 55 calculations at MBE(2), above the package server's limit: refused, naming the entry
    dataset.add_entry("w10", portal_molecule(water_cluster(10, shift=SHIFT)))
    with pytest.raises(
        PortalRequestError, match=r"entry 'w10' with specification '\S+' \(id \d+\): this expansion needs 55"
    ):
        dataset.submit()
    assert dataset.record_count == 4
    dataset.delete_entries("w10")

    kept = [ids["trimer", "levels"], ids["trimer", "eager"]]
    kept_children = [c.singlepoint_id for r in client.get_records(kept) for c in r.clusters]
    dataset.delete_entries("dimer", delete_records=True)
    assert client.get_records([ids["dimer", s] for s in SPECS], missing_ok=True) == [None, None]
    assert all(r.status == RecordStatusEnum.complete for r in client.get_records(kept))
    assert None not in client.get_singlepoints(kept_children, missing_ok=True)
    fresh = client.get_dataset("qcmb_manybody", "water clusters")
    assert fresh.entry_names == ["w3"] and fresh.record_count == 2
    assert fresh.status() == {"eager": {RecordStatusEnum.complete: 1}, "by-level": {RecordStatusEnum.complete: 1}}

    fresh.delete_specification("by-level")  # without delete_records: the link goes, the record stays
    assert client.get_records(ids["trimer", "levels"]).status == RecordStatusEnum.complete
    assert fresh.status() == {"eager": {RecordStatusEnum.complete: 1}}

    copy = client.clone_dataset(fresh.id, "water clusters copy")  # entries, specifications and record links
    assert isinstance(copy, QCMBDataset) and copy.entry_names == ["w3"] and copy.specification_names == ["eager"]
    assert copy.get_entry("w3").attributes == {"n_waters": 3}
    assert copy.get_record("w3", "eager").id == ids["trimer", "eager"]
    client.delete_dataset(copy.id, delete_records=False)  # the cascade through the type's tables leaves the record
    assert client.get_records(ids["trimer", "eager"]).status == RecordStatusEnum.complete
    assert fresh.get_record("w3", "eager").id == ids["trimer", "eager"]
    with pytest.raises(PortalRequestError, match="Could not find"):
        client.get_dataset("qcmb_manybody", "water clusters copy")


def test_upgrade_adds_the_dataset_tables_to_a_plugin_database_of_schema_1():
    from qcfractal.db_socket import SQLAlchemySocket

    db_name = "qcmb_plugin_dataset_upgrade"
    cfg = fresh_database(db_name, plugin=True)
    engine = create_engine(cfg.sqlalchemy_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:  # as schema 1 left it: QCFractal's own dataset view, no dataset tables
            attr, modules, _ = install.VIEWS["dataset_direct_records_view"]
            own = install._view_sql(attr, modules[:-1])
            conn.execute(text(f"CREATE OR REPLACE VIEW dataset_direct_records_view AS {own}"))
            for table in reversed(DATASET_TABLES):
                conn.execute(text(f"DROP TABLE {table.name}"))
            conn.execute(text("UPDATE qcmb_plugin_version SET schema_version = 1"))
        problems = install.schema_problems(engine)
        assert {f"table {t.name} is missing" for t in DATASET_TABLES} <= set(problems)
        assert "view dataset_direct_records_view does not include qcmb_manybody_dataset_record" in problems

        SQLAlchemySocket.upgrade_database(cfg)  # what `qcmb-fractal-server upgrade-db` runs
        assert install.schema_problems(engine) == []
    finally:
        engine.dispose()
        drop_database(db_name)
