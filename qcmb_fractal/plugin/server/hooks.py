"""Hook the qcmb_manybody record type into QCFractal, which has no plugin API.

Hook points (all checked by :func:`check_startup`):
- ``FractalConfig`` forbids unknown keys; the plugin's ``qcmb_fractal`` section (:mod:`.config`) is added to
  it as a field, so the server's YAML file, ``QCF_`` environment variables and ``info`` all know it.
- ``SQLAlchemySocket.__init__``: every server process (API, job runner, maintenance commands) builds one
  before it serves anything; the wrapper installs the hooks below first.
- ``SQLAlchemySocket._check_db_revision``: QCFractal's own check that the database schema is current (run by
  ``start`` before it spawns anything, by every socket, and by the maintenance commands); the wrapper also
  requires the plugin's tables, trigger, views and version stamp.
- ``SQLAlchemySocket.create_database_tables`` and ``upgrade_database`` (``init-db``, ``upgrade-db``): the
  plugin's schema is installed after QCFractal's (see :mod:`.install`).
- ``RecordSocket.__init__`` builds fixed handler maps; the wrapper adds this record type's socket.
- ``RecordSocket.update_failed_service`` errors a service once a child errored; the wrapper lets this
  record type retry the child first.
- ``DatasetSocket.__init__`` builds a fixed handler map of dataset types; the wrapper adds the qcmb_manybody
  dataset socket. QCFractal's ``BaseDataset`` registry (keyed by ``dataset_type``) learns the dataset's client
  class when :mod:`qcmb_fractal.plugin.client.dataset_models` is imported, which the routes do; the ORM's
  polymorphic identity is registered by importing :mod:`.dataset_db_models`.
- ``RecordSocket.update_completed`` stores a child's result; the wrapper then queues the iteration of a
  qcmb_manybody service whose children are now all complete, instead of leaving it to the next pass of the
  service loop (``service_frequency``, 60 s by default) (see ``advance_when_ready`` in :mod:`.record_socket`).
- the ``api_v1`` blueprint: routes are added on import of ``record_routes`` and ``dataset_routes``, which must
  happen before ``create_flask_app`` registers the blueprint (it builds the socket first, so the socket hook is
  in time).
- the database: tables, deletion trigger, children views and dataset records view (see :mod:`.install`).
- ``qcfractal_server_cli.parse_args`` builds QCFractal's command-line parser and parses at once;
  :func:`qcfractal_commands` catches the parser to list QCFractal's commands in ``qcmb-fractal-server --help``.

A process that meets qcmb_manybody rows without these hooks breaks polymorphic queries and the service loop
for every record type. So the package installs ``qcmb_fractal_autoload.pth``: in every Python process,
``_qcmb_fractal_autoload`` hands ``qcfractal.config`` and ``qcfractal.db_socket.socket`` to
:func:`on_qcfractal_module` as each finishes loading, and plain ``qcfractal-server`` commands (and every
process they spawn) get the plugin. Where the plugin must stay out (an untested QCFractal, or
``QCMB_FRACTAL_AUTOLOAD=0``) only a guard goes in: QCFractal refuses to start on a database that holds the
plugin's tables instead of serving it half. This module imports nothing of the plugin at module level,
so the guard works even where the rest cannot load.
"""

import functools
import logging
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import qcfractal

from qcmb_fractal.plugin import DATASET_TYPE, RECORD_TYPE, TESTED_QCFRACTAL

if TYPE_CHECKING:  # qcfractal.config may be the very module being hooked: never import it at module level
    from qcfractal.config import DatabaseConfig

logger = logging.getLogger(__name__)

RECORD_TABLE = f"{RECORD_TYPE}_record"
UPGRADE_ADVICE = (
    "Run `qcfractal-server upgrade-db --config <server config>` (or `qcmb-fractal-server upgrade-db`, the same "
    "with the plugin named) to create or upgrade the plugin's tables and views."
)


class PluginStartupError(RuntimeError):
    """The plugin cannot run safely in this QCFractal installation or database; the message says why."""


def _mark(function: Callable, kind: str = "_qcmb_hook") -> Callable:
    setattr(function, kind, True)
    return function


def _hooked(function: Any, kind: str = "_qcmb_hook") -> bool:
    return getattr(function, kind, False)


def version_problem() -> str | None:
    if any(qcfractal.__version__ == v or qcfractal.__version__.startswith(v + ".") for v in TESTED_QCFRACTAL):
        return None
    return (
        f"qcmb-fractal's server plugin reaches into QCFractal internals and was tested with QCFractal "
        f"{', '.join(TESTED_QCFRACTAL)} only; this is QCFractal {qcfractal.__version__}. "
        f"Install a tested QCFractal (pip install 'qcfractal=={TESTED_QCFRACTAL[-1]}.*') or a qcmb-fractal "
        "release that supports this one."
    )


def on_qcfractal_module(name: str, module: ModuleType, *, kept_out_by: str | None = None) -> None:
    """Hook a watched QCFractal module as it finishes loading (called by ``_qcmb_fractal_autoload``).

    Only cheap patches happen here, on the module just loaded: QCFractal is still importing, so the
    record type itself is hooked later, when the first socket is built.
    """
    reason = kept_out_by or version_problem()
    if name == "qcfractal.config":  # also with the plugin kept out: its configuration still reads, the guard says why
        add_config_section(module.FractalConfig)
    elif name == "qcfractal.db_socket.socket":
        if reason is None:
            hook_database_socket(module.SQLAlchemySocket)
        else:
            guard_database_socket(module.SQLAlchemySocket, reason)


def add_config_section(config_cls: Any) -> None:
    """Give FractalConfig (extra keys forbidden) the plugin's ``qcmb_fractal`` section; idempotent."""
    from pydantic import Field
    from pydantic.fields import FieldInfo

    from qcmb_fractal.plugin.server.config import CONFIG_SECTION, QCMBServerConfig

    if CONFIG_SECTION in config_cls.__pydantic_fields__:
        return
    field = Field(default_factory=QCMBServerConfig, description=QCMBServerConfig.__doc__)
    config_cls.__annotations__[CONFIG_SECTION] = QCMBServerConfig
    config_cls.__pydantic_fields__[CONFIG_SECTION] = FieldInfo.from_annotated_attribute(QCMBServerConfig, field)
    config_cls.model_rebuild(force=True)


def _original(function: Callable) -> Callable:
    """The QCFractal function under a guard, so the full hooks replace the guard instead of wrapping it."""
    return function.__wrapped__ if _hooked(function, "_qcmb_guard") else function


def hook_database_socket(socket_cls: Any) -> None:
    """Wrap SQLAlchemySocket so each process hooks the record type and checks and installs the schema."""
    if _hooked(socket_cls.__init__):
        return
    original_init = socket_cls.__init__
    original_check = _original(socket_cls._check_db_revision)
    original_create = socket_cls.create_database_tables
    original_upgrade = socket_cls.upgrade_database

    @functools.wraps(original_init)
    def __init__(self: Any, qcf_config: Any) -> None:
        install_hooks()
        original_init(self, qcf_config)

    @functools.wraps(original_check)
    def _check_db_revision(engine: Any) -> None:
        from qcmb_fractal.plugin.server.install import schema_problems

        original_check(engine)
        problems = schema_problems(engine)
        if problems:
            raise PluginStartupError(startup_message(problems))

    @functools.wraps(original_create)
    def create_database_tables(db_config: "DatabaseConfig") -> None:
        from qcmb_fractal.plugin.server.install import install_schema

        original_create(db_config)
        install_schema(db_config)

    @functools.wraps(original_upgrade)
    def upgrade_database(db_config: "DatabaseConfig", revision: str = "head") -> None:
        from qcmb_fractal.plugin.server.install import install_schema

        original_upgrade(db_config, revision)
        if revision == "head":  # QCFractal's migrations may replace the children views; put this type back in
            install_schema(db_config)

    socket_cls.__init__ = _mark(__init__)
    socket_cls._check_db_revision = staticmethod(_mark(_check_db_revision))
    socket_cls.create_database_tables = staticmethod(_mark(create_database_tables))
    socket_cls.upgrade_database = staticmethod(_mark(upgrade_database))


def guard_database_socket(socket_cls: Any, reason: str) -> None:
    """Without the plugin, make QCFractal's schema check refuse a database that holds the plugin's tables."""
    if _hooked(socket_cls._check_db_revision) or _hooked(socket_cls._check_db_revision, "_qcmb_guard"):
        return
    original_check = socket_cls._check_db_revision

    @functools.wraps(original_check)
    def _check_db_revision(engine: Any) -> None:
        from sqlalchemy import text

        original_check(engine)
        with engine.connect() as conn:
            held = conn.execute(text("SELECT to_regclass(:name)"), {"name": RECORD_TABLE}).scalar()
        if held is not None:
            raise PluginStartupError(
                f"this database holds the tables of qcmb-fractal's {RECORD_TYPE} record type, but its plugin is not "
                f"loaded here: {reason}. QCFractal without the plugin would stop the service loop of every record "
                f"type on such a database, so it does not start."
            )

    socket_cls._check_db_revision = staticmethod(_mark(_check_db_revision, "_qcmb_guard"))
    logger.warning("qcmb-fractal's QCFractal plugin is not loaded (%s); only its database guard is", reason)


def install_hooks() -> None:
    """Register the record type in this process; idempotent. Call before any QCFractal socket or app exists."""
    from qcfractal.components.dataset_socket import DatasetSocket
    from qcfractal.components.record_socket import RecordSocket

    if _hooked(RecordSocket.__init__):
        return
    problem = version_problem()
    if problem:
        raise PluginStartupError(problem)

    from qcfractal.flask_app.api_v1.blueprint import api_v1

    from qcmb_fractal.plugin.client.record_models import QCMBInput

    registered = api_v1._got_registered_once
    if registered:
        # A Flask app built earlier in this process (e.g. a plain snowflake in a test session) keeps its
        # routes; apps built from now on replay the blueprint's deferred routes, ours included.
        logger.warning("QCFractal apps created before the qcmb_manybody hooks do not serve its routes")
        api_v1._got_registered_once = False
    try:
        from qcmb_fractal.plugin.server import dataset_routes, record_routes  # noqa: F401  (add routes to api_v1)
    finally:
        api_v1._got_registered_once = registered
    from qcmb_fractal.plugin.server.dataset_socket import QCMBDatasetSocket
    from qcmb_fractal.plugin.server.record_socket import FAILED_DEPENDENCIES_MESSAGE, QCMBManyBodyRecordSocket

    original_init = RecordSocket.__init__
    original_dataset_init = DatasetSocket.__init__
    original_update_failed_service = RecordSocket.update_failed_service
    original_update_completed = RecordSocket.update_completed

    def __init__(self, root_socket) -> None:
        original_init(self, root_socket)
        socket = QCMBManyBodyRecordSocket(root_socket)
        self.qcmb_manybody = socket
        self._handler_map[RECORD_TYPE] = socket
        self._handler_map_by_input[QCMBInput] = socket

    def update_failed_service(self, session, record_orm, error_info) -> None:
        if (
            record_orm.record_type == RECORD_TYPE
            and error_info.get("error_message") == FAILED_DEPENDENCIES_MESSAGE
            and record_orm.service is not None
        ):
            try:
                self.qcmb_manybody.handle_failed_dependencies(session, record_orm.service)
                return
            except Exception as err:  # never let one record stop the service loop of every record type
                logger.exception("qcmb_manybody record %s: handling failed children raised", record_orm.id)
                session.rollback()
                error_info = {**error_info, "error_message": f"{FAILED_DEPENDENCIES_MESSAGE}; retry failed: {err}"}
        original_update_failed_service(self, session, record_orm, error_info)

    def dataset_init(self, root_socket) -> None:
        original_dataset_init(self, root_socket)
        socket = QCMBDatasetSocket(root_socket)
        self.qcmb_manybody = socket
        self._handler_map[socket.dataset_type] = socket

    def update_completed(self, session, record_id, record_type, result, manager_name):
        out = original_update_completed(self, session, record_id, record_type, result, manager_name)
        try:
            with session.begin_nested():
                self.qcmb_manybody.advance_when_ready(session, record_id)
        except Exception:  # never let a shortcut fail a result: the service loop still finds the service
            logger.exception("record %s: queueing its qcmb_manybody service's next step raised", record_id)
        return out

    RecordSocket.__init__ = _mark(__init__)
    RecordSocket.update_failed_service = _mark(update_failed_service)
    RecordSocket.update_completed = _mark(update_completed)
    DatasetSocket.__init__ = _mark(dataset_init)
    logger.info("qcmb_manybody record and dataset types hooked into QCFractal %s", qcfractal.__version__)


def activate() -> None:
    """Load the plugin into this process now, as the autoload does on import (for a process without it)."""
    problem = version_problem()
    if problem:
        raise PluginStartupError(problem)
    import qcfractal.config as config_module
    from qcfractal.db_socket import socket as socket_module

    add_config_section(config_module.FractalConfig)
    hook_database_socket(socket_module.SQLAlchemySocket)
    install_hooks()


def qcfractal_commands() -> list[tuple[str, str]]:
    """QCFractal's server commands and their help, read from its own parser (so new commands show up too)."""
    import argparse

    from qcfractal import qcfractal_server_cli

    class Caught(Exception):
        pass

    def catch(parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        raise Caught(parser)

    parse_args = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = catch
    try:
        qcfractal_server_cli.parse_args()
        raise RuntimeError("QCFractal's parse_args() no longer parses with argparse")
    except Caught as caught:
        parser = caught.args[0]
    finally:
        argparse.ArgumentParser.parse_args = parse_args
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [(choice.dest, choice.help or "") for choice in commands._choices_actions]


def hook_problems() -> list[str]:
    import sys

    from qcfractal.components.dataset_socket import DatasetSocket
    from qcfractal.components.record_socket import RecordSocket
    from qcfractal.config import FractalConfig
    from qcfractal.db_socket import SQLAlchemySocket
    from qcportal.dataset_models import BaseDataset

    from qcmb_fractal.plugin.server.config import CONFIG_SECTION

    problems = []
    if CONFIG_SECTION not in FractalConfig.__pydantic_fields__:
        problems.append(f"FractalConfig has no {CONFIG_SECTION} section (the plugin was never activated here)")
    for name in ("__init__", "_check_db_revision", "create_database_tables", "upgrade_database"):
        if not _hooked(getattr(SQLAlchemySocket, name)):
            problems.append(f"SQLAlchemySocket.{name} is not hooked")
    if not _hooked(RecordSocket.__init__):
        problems.append("RecordSocket.__init__ is not hooked (install_hooks() was not called in this process)")
    if not _hooked(RecordSocket.update_failed_service):
        problems.append("RecordSocket.update_failed_service is not hooked")
    if not _hooked(RecordSocket.update_completed):
        problems.append("RecordSocket.update_completed is not hooked")
    if not _hooked(DatasetSocket.__init__):
        problems.append("DatasetSocket.__init__ is not hooked (install_hooks() was not called in this process)")
    for routes in ("record_routes", "dataset_routes"):
        if f"qcmb_fractal.plugin.server.{routes}" not in sys.modules:
            problems.append(f"the qcmb_manybody {routes} were never added to the api_v1 blueprint")
    if DATASET_TYPE not in BaseDataset._all_subclasses:
        problems.append(f"QCPortal's BaseDataset does not know the {DATASET_TYPE} dataset type")
    return problems


def startup_message(problems: list[str]) -> str:
    return "qcmb-fractal server plugin cannot start:\n  - " + "\n  - ".join(problems) + "\n" + UPGRADE_ADVICE


def check_startup(db_config: "DatabaseConfig | None") -> None:
    """Refuse to start, with every reason at once, unless QCFractal version, hooks and database all hold."""
    problems = [p for p in [version_problem()] if p] + hook_problems()
    if db_config is not None and not problems:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        from qcmb_fractal.plugin.server.install import schema_problems

        engine = create_engine(db_config.sqlalchemy_url, poolclass=NullPool)
        try:
            problems += schema_problems(engine)
        finally:
            engine.dispose()
    if problems:
        raise PluginStartupError(startup_message(problems))
