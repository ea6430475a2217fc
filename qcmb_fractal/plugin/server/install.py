"""Create or upgrade the plugin's part of a QCFractal database: tables, deletion trigger, children views, stamp.

Everything here is idempotent: QCFractal's own ``init-db`` and ``upgrade-db`` call :func:`install_schema` after
their own work (see :mod:`.hooks`), and QCFractal's schema check calls :func:`schema_problems`.
QCFractal's children views are fixed unions over its own record types; they are replaced by the same
unions plus this record type, or delete/cancel/reset/children_status would never see its children.

QCFractal leaves ``service_dependency.record_id`` without an index, so deleting a record checks that foreign key
by scanning the whole table, dead rows of the same transaction included: deleting N children of a service that
depended on them, or on a server whose running services wait on many children, costs N whole-table scans (22 min
for the 102,090 children of issue 8). The plugin adds that index (:data:`DEPENDENCY_INDEX`).
"""

import logging

from qcfractal.components.gridoptimization import record_db_models as gridoptimization
from qcfractal.components.manybody import record_db_models as manybody
from qcfractal.components.neb import record_db_models as neb
from qcfractal.components.optimization import record_db_models as optimization
from qcfractal.components.reaction import record_db_models as reaction
from qcfractal.components.torsiondrive import record_db_models as torsiondrive
from qcfractal.config import DatabaseConfig
from qcfractal.db_socket import BaseORM
from sqlalchemy import Engine, create_engine, delete, text, union
from sqlalchemy.dialects import postgresql

import qcmb_fractal
from qcmb_fractal.plugin import SCHEMA_VERSION
from qcmb_fractal.plugin.server import record_db_models as plugin_models

logger = logging.getLogger(__name__)

_QCFRACTAL_COMPONENTS = (optimization, gridoptimization, torsiondrive, manybody, reaction, neb)
PLUGIN_TABLE_MARKER = plugin_models.QCMBClusterORM.__tablename__


def _view_sql(attr: str) -> str:
    selects = [s for mod in (*_QCFRACTAL_COMPONENTS, plugin_models) for s in getattr(mod, attr)]
    return str(union(*selects).compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))


VIEWS = {
    "record_direct_children_view": "record_direct_children_select",
    "record_children_view": "record_children_select",
}


DEPENDENCY_INDEX = "ix_qcmb_service_dependency_record_id"
_create_dependency_index = text(f"CREATE INDEX IF NOT EXISTS {DEPENDENCY_INDEX} ON service_dependency (record_id)")


def install_schema(db_config: DatabaseConfig) -> None:
    """Create the plugin tables and the dependency index (if missing), the trigger (if missing), replace both views,
    stamp the version."""
    engine = create_engine(db_config.sqlalchemy_url)
    try:
        with engine.begin() as conn:
            # The after_create listener adds the deletion trigger when the record table is created here.
            BaseORM.metadata.create_all(conn, tables=plugin_models.PLUGIN_TABLES, checkfirst=True)
            has_trigger = conn.execute(
                text("SELECT 1 FROM pg_trigger WHERE tgname = :name"), {"name": plugin_models.DELETE_TRIGGER_NAME}
            ).first()
            if has_trigger is None:
                conn.execute(plugin_models._del_baserecord_trigger)
            conn.execute(_create_dependency_index)
            for view, attr in VIEWS.items():
                conn.execute(text(f"CREATE OR REPLACE VIEW {view} AS {_view_sql(attr)}"))
            conn.execute(delete(plugin_models.QCMBSchemaVersionORM))
            conn.execute(
                plugin_models.QCMBSchemaVersionORM.__table__.insert().values(
                    schema_version=SCHEMA_VERSION, package_version=qcmb_fractal.__version__
                )
            )
    finally:
        engine.dispose()
    logger.info("qcmb-fractal schema %d installed in %s", SCHEMA_VERSION, db_config.safe_uri)


def schema_problems(engine: Engine) -> list[str]:
    """Everything about the database that would make the plugin misbehave; empty when it is ready."""
    problems: list[str] = []
    with engine.connect() as conn:

        def scalar(sql: str, **params: str):
            return conn.execute(text(sql), params).scalar()

        for table in plugin_models.PLUGIN_TABLES:
            if scalar("SELECT to_regclass(:name)", name=table.name) is None:
                problems.append(f"table {table.name} is missing")
        if scalar("SELECT 1 FROM pg_trigger WHERE tgname = :name", name=plugin_models.DELETE_TRIGGER_NAME) is None:
            problems.append(f"deletion trigger {plugin_models.DELETE_TRIGGER_NAME} is missing")
        if scalar("SELECT to_regclass(:name)", name=DEPENDENCY_INDEX) is None:
            problems.append(f"index {DEPENDENCY_INDEX} (on service_dependency.record_id) is missing")
        for view in VIEWS:
            definition = scalar("SELECT pg_get_viewdef(to_regclass(:name))", name=view)
            if definition is None or PLUGIN_TABLE_MARKER not in definition:
                problems.append(f"view {view} does not include {PLUGIN_TABLE_MARKER}")
        if not problems:
            stamp = scalar(f"SELECT schema_version FROM {plugin_models.QCMBSchemaVersionORM.__tablename__}")
            if stamp != SCHEMA_VERSION:
                problems.append(f"plugin schema version is {stamp}, this code needs {SCHEMA_VERSION}")
    return problems
