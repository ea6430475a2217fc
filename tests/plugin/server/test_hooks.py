"""Start-up checks refuse clearly; the schema install is idempotent on an existing QCFractal database."""

import psycopg2
import pytest
import qcfractal

from qcmb_fractal.plugin.server import hooks
from qcmb_fractal.plugin.server.install import install_schema, schema_problems
from qcmb_fractal.testing.fractal import drop_database, fresh_database

DB_NAME = "qcmb_plugin_hooks"


def test_untested_qcfractal_version_is_refused_with_advice(monkeypatch):
    monkeypatch.setattr(qcfractal, "__version__", "0.99.0")
    with pytest.raises(hooks.PluginStartupError, match=r"tested with QCFractal 0\.71 only; this is QCFractal 0\.99"):
        hooks.check_startup(None)


def test_database_without_plugin_views_is_refused_until_the_schema_is_installed_twice_over():
    hooks.install_hooks()
    cfg = fresh_database(DB_NAME, plugin=False)
    try:
        with pytest.raises(hooks.PluginStartupError) as err:
            hooks.check_startup(cfg)
        message = str(err.value)
        assert "view record_children_view does not include qcmb_manybody_cluster" in message
        assert "qcmb-fractal-server upgrade-db" in message

        install_schema(cfg)
        install_schema(cfg)  # idempotent: nothing duplicated, stamp replaced
        assert schema_problems(cfg) == []
        hooks.check_startup(cfg)
        conn = psycopg2.connect(cfg.psycopg2_dsn)
        with conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM qcmb_plugin_version")
            assert cur.fetchone()[0] == 1
            cur.execute("SELECT count(*) FROM pg_trigger WHERE tgname = 'qca_qcmb_manybody_record_delete_base_tr'")
            assert cur.fetchone()[0] == 1
        conn.close()
    finally:
        drop_database(DB_NAME)
