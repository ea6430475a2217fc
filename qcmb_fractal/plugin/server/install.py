"""Create or upgrade the plugin's part of a QCFractal database: tables, deletion trigger, views, stamp.

Everything here is idempotent: QCFractal's own ``init-db`` and ``upgrade-db`` call :func:`install_schema` after
their own work (see :mod:`.hooks`), and QCFractal's schema check calls :func:`schema_problems`. Missing tables
are created, so ``upgrade-db`` brings a database of an older plugin schema (1: records only) up to this one.
QCFractal's children views are fixed unions over its own record types; they are replaced by the same
unions plus this record type, or delete/cancel/reset/children_status would never see its children. Its
dataset records view likewise gets this dataset type, or record queries by dataset would miss its records.

QCFractal leaves ``service_dependency.record_id`` without an index, so deleting a record checks that foreign key
by scanning the whole table, dead rows of the same transaction included: deleting N children of a service that
depended on them, or on a server whose running services wait on many children, costs N whole-table scans (22 min
for the 102,090 children of issue 8). The plugin adds that index (:data:`DEPENDENCY_INDEX`).
"""

import logging

from qcfractal.components.gridoptimization import dataset_db_models as gridoptimization_datasets
from qcfractal.components.gridoptimization import record_db_models as gridoptimization
from qcfractal.components.manybody import dataset_db_models as manybody_datasets
from qcfractal.components.manybody import record_db_models as manybody
from qcfractal.components.neb import dataset_db_models as neb_datasets
from qcfractal.components.neb import record_db_models as neb
from qcfractal.components.optimization import dataset_db_models as optimization_datasets
from qcfractal.components.optimization import record_db_models as optimization
from qcfractal.components.reaction import dataset_db_models as reaction_datasets
from qcfractal.components.reaction import record_db_models as reaction
from qcfractal.components.singlepoint import dataset_db_models as singlepoint_datasets
from qcfractal.components.torsiondrive import dataset_db_models as torsiondrive_datasets
from qcfractal.components.torsiondrive import record_db_models as torsiondrive
from qcfractal.config import DatabaseConfig
from qcfractal.db_socket import BaseORM
from sqlalchemy import Engine, create_engine, delete, text, union
from sqlalchemy.dialects import postgresql

import qcmb_fractal
from qcmb_fractal.plugin import SCHEMA_VERSION
from qcmb_fractal.plugin.server import dataset_db_models as plugin_datasets
from qcmb_fractal.plugin.server import record_db_models as plugin_models

logger = logging.getLogger(__name__)

# In the order of QCFractal's own unions (dataset_db_views.py, record_db_views.py): the views' columns stay the same.
_RECORD_MODULES = (optimization, gridoptimization, torsiondrive, manybody, reaction, neb, plugin_models)
_DATASET_MODULES = (
    singlepoint_datasets,
    optimization_datasets,
    gridoptimization_datasets,
    torsiondrive_datasets,
    manybody_datasets,
    reaction_datasets,
    neb_datasets,
    plugin_datasets,
)
PLUGIN_TABLE_MARKER = plugin_models.QCMBClusterORM.__tablename__
DATASET_TABLE_MARKER = plugin_datasets.QCMBDatasetRecordItemORM.__tablename__
TABLES = [*plugin_models.PLUGIN_TABLES, *plugin_datasets.DATASET_TABLES]


def _view_sql(attr: str, modules: tuple) -> str:
    selects = [s for mod in modules for s in getattr(mod, attr)]
    return str(union(*selects).compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))


# view → (the components' select lists it unites, the plugin table its definition must name)
VIEWS = {
    "record_direct_children_view": ("record_direct_children_select", _RECORD_MODULES, PLUGIN_TABLE_MARKER),
    "record_children_view": ("record_children_select", _RECORD_MODULES, PLUGIN_TABLE_MARKER),
    "dataset_direct_records_view": ("dataset_records_select", _DATASET_MODULES, DATASET_TABLE_MARKER),
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
            BaseORM.metadata.create_all(conn, tables=TABLES, checkfirst=True)
            has_trigger = conn.execute(
                text("SELECT 1 FROM pg_trigger WHERE tgname = :name"), {"name": plugin_models.DELETE_TRIGGER_NAME}
            ).first()
            if has_trigger is None:
                conn.execute(plugin_models._del_baserecord_trigger)
            conn.execute(_create_dependency_index)
            for view, (attr, modules, _) in VIEWS.items():
                conn.execute(text(f"CREATE OR REPLACE VIEW {view} AS {_view_sql(attr, modules)}"))
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

        for table in TABLES:
            if scalar("SELECT to_regclass(:name)", name=table.name) is None:
                problems.append(f"table {table.name} is missing")
        if scalar("SELECT 1 FROM pg_trigger WHERE tgname = :name", name=plugin_models.DELETE_TRIGGER_NAME) is None:
            problems.append(f"deletion trigger {plugin_models.DELETE_TRIGGER_NAME} is missing")
        if scalar("SELECT to_regclass(:name)", name=DEPENDENCY_INDEX) is None:
            problems.append(f"index {DEPENDENCY_INDEX} (on service_dependency.record_id) is missing")
        for view, (_, _, marker) in VIEWS.items():
            definition = scalar("SELECT pg_get_viewdef(to_regclass(:name))", name=view)
            if definition is None or marker not in definition:
                problems.append(f"view {view} does not include {marker}")
        if not problems:
            stamp = scalar(f"SELECT schema_version FROM {plugin_models.QCMBSchemaVersionORM.__tablename__}")
            if stamp != SCHEMA_VERSION:
                problems.append(f"plugin schema version is {stamp}, this code needs {SCHEMA_VERSION}")
    return problems
