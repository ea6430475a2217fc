"""Start-up checks refuse clearly; the schema install is idempotent; the configuration carries the limit."""

import psycopg2
import pytest
import qcfractal
from pydantic import ValidationError
from qcfractal.config import FractalConfig
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from qcmb_fractal.plan.planner import MAX_TASKS
from qcmb_fractal.plugin.server import hooks
from qcmb_fractal.plugin.server.config import DEFAULT_MAX_CHILDREN, DEFAULT_MAX_CHILDREN_PER_ITERATION, plugin_config
from qcmb_fractal.plugin.server.install import install_schema, schema_problems
from qcmb_fractal.plugin.server.record_db_models import QCMBManyBodyRecordORM
from qcmb_fractal.testing.fractal import drop_database, plain_database

DB_NAME = "qcmb_plugin_hooks"


def test_untested_qcfractal_version_is_refused_with_advice(monkeypatch):
    monkeypatch.setattr(qcfractal, "__version__", "0.99.0")
    with pytest.raises(hooks.PluginStartupError, match=r"tested with QCFractal 0\.71 only; this is QCFractal 0\.99"):
        hooks.check_startup(None)
    with pytest.raises(hooks.PluginStartupError, match=r"this is QCFractal 0\.99"):
        hooks.activate()


def test_plain_database_is_refused_until_the_schema_is_installed_and_the_guard_refuses_it_then():
    hooks.activate()
    cfg = plain_database(DB_NAME)

    class PlainSocket:
        """Stands in for SQLAlchemySocket in a process that runs QCFractal without the plugin."""

        @staticmethod
        def _check_db_revision(engine) -> None:
            pass

    hooks.guard_database_socket(PlainSocket, "QCMB_FRACTAL_AUTOLOAD=0")
    engine = create_engine(cfg.sqlalchemy_url, poolclass=NullPool)
    try:
        PlainSocket._check_db_revision(engine)  # no plugin tables: plain QCFractal may serve it
        with pytest.raises(hooks.PluginStartupError) as err:
            hooks.check_startup(cfg)
        message = str(err.value)
        assert "table qcmb_manybody_record is missing" in message
        assert "view record_children_view does not include qcmb_manybody_cluster" in message
        assert "table qcmb_manybody_dataset_record is missing" in message
        assert "view dataset_direct_records_view does not include qcmb_manybody_dataset_record" in message
        assert "index ix_qcmb_service_dependency_record_id (on service_dependency.record_id) is missing" in message
        assert "qcfractal-server upgrade-db" in message

        install_schema(cfg)
        install_schema(cfg)  # idempotent: nothing duplicated, stamp replaced
        assert schema_problems(engine) == []
        hooks.check_startup(cfg)
        conn = psycopg2.connect(cfg.psycopg2_dsn)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM qcmb_plugin_version")
            assert cur.fetchone()[0] == 1
            cur.execute("SELECT count(*) FROM pg_trigger WHERE tgname = 'qca_qcmb_manybody_record_delete_base_tr'")
            assert cur.fetchone()[0] == 1
        conn.close()

        with pytest.raises(hooks.PluginStartupError) as guarded:
            PlainSocket._check_db_revision(engine)
        assert "holds the tables of qcmb-fractal's qcmb_manybody record type" in str(guarded.value)
        assert "QCMB_FRACTAL_AUTOLOAD=0" in str(guarded.value)
    finally:
        engine.dispose()
        drop_database(DB_NAME)


def test_guard_knows_the_record_table():
    assert QCMBManyBodyRecordORM.__tablename__ == hooks.RECORD_TABLE


def test_server_configuration_carries_the_limit(monkeypatch, tmp_path):
    hooks.activate()
    required = {"base_folder": str(tmp_path), "database": {"username": "u", "password": "p"}}
    required["api"] = {"secret_key": "s", "jwt_secret_key": "j"}
    assert plugin_config(FractalConfig(**required)).max_children_per_record == DEFAULT_MAX_CHILDREN
    set_in_file = FractalConfig(**required, qcmb_fractal={"max_children_per_record": 500})
    assert plugin_config(set_in_file).max_children_per_record == 500
    shown = {"max_children_per_record": 500, "max_children_per_iteration": DEFAULT_MAX_CHILDREN_PER_ITERATION}
    assert set_in_file.model_dump()["qcmb_fractal"] == shown  # `info` shows it

    monkeypatch.setenv("QCF_QCMB_FRACTAL__MAX_CHILDREN_PER_RECORD", "700")
    assert plugin_config(FractalConfig(**required)).max_children_per_record == 700
    monkeypatch.delenv("QCF_QCMB_FRACTAL__MAX_CHILDREN_PER_RECORD")
    monkeypatch.setenv("QCF_QCMB_FRACTAL__MAX_CHILDREN_PER_ITERATION", "300")
    assert plugin_config(FractalConfig(**required)).max_children_per_iteration == 300
    monkeypatch.delenv("QCF_QCMB_FRACTAL__MAX_CHILDREN_PER_ITERATION")

    with pytest.raises(ValidationError, match="max_children_per_recrod"):
        FractalConfig(**required, qcmb_fractal={"max_children_per_recrod": 5})  # extra keys stay forbidden
    with pytest.raises(ValidationError, match=f"must be at most {MAX_TASKS:,}"):
        FractalConfig(**required, qcmb_fractal={"max_children_per_record": MAX_TASKS + 1})
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        FractalConfig(**required, qcmb_fractal={"max_children_per_record": 0})
