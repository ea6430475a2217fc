"""Hook the qcmb_manybody record type into QCFractal, which has no plugin API.

Hook points (all checked by :func:`check_startup`):
- ``RecordSocket.__init__`` builds fixed handler maps; the wrapper adds this record type's socket.
- ``RecordSocket.update_failed_service`` errors a service once a child errored; the wrapper lets this
  record type retry the child first.
- the ``api_v1`` blueprint: routes are added on import of ``record_routes``, which must happen before
  ``create_flask_app`` registers the blueprint.
- the database: tables, deletion trigger and children views (see :mod:`.install`).
A process that meets qcmb_manybody rows without these hooks breaks polymorphic queries and the service
loop for every record type, so every server process must import this module (``qcmb-fractal-server``
does it in the parent and, through the re-imported main module, in every spawned child).
"""

import logging

import qcfractal
from qcfractal.config import DatabaseConfig

from qcmb_fractal.plugin import RECORD_TYPE, TESTED_QCFRACTAL

logger = logging.getLogger(__name__)


class PluginStartupError(RuntimeError):
    """The plugin cannot run safely in this QCFractal installation or database; the message says why."""


def version_problem() -> str | None:
    if any(qcfractal.__version__ == v or qcfractal.__version__.startswith(v + ".") for v in TESTED_QCFRACTAL):
        return None
    return (
        f"qcmb-fractal's server plugin reaches into QCFractal internals and was tested with QCFractal "
        f"{', '.join(TESTED_QCFRACTAL)} only; this is QCFractal {qcfractal.__version__}. "
        f"Install a tested QCFractal (pip install 'qcfractal=={TESTED_QCFRACTAL[-1]}.*') or a qcmb-fractal "
        "release that supports this one."
    )


def install_hooks() -> None:
    """Register the record type in this process; idempotent. Call before any QCFractal socket or app exists."""
    from qcfractal.components.record_socket import RecordSocket

    if getattr(RecordSocket.__init__, "_qcmb_hook", False):
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
        from qcmb_fractal.plugin.server import record_routes  # noqa: F401  (adds the routes to api_v1)
    finally:
        api_v1._got_registered_once = registered
    from qcmb_fractal.plugin.server.record_socket import FAILED_DEPENDENCIES_MESSAGE, QCMBManyBodyRecordSocket

    original_init = RecordSocket.__init__
    original_update_failed_service = RecordSocket.update_failed_service

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

    __init__._qcmb_hook = True
    update_failed_service._qcmb_hook = True
    RecordSocket.__init__ = __init__
    RecordSocket.update_failed_service = update_failed_service
    logger.info("qcmb_manybody record type hooked into QCFractal %s", qcfractal.__version__)


def hook_problems() -> list[str]:
    import sys

    from qcfractal.components.record_socket import RecordSocket

    problems = []
    if not getattr(RecordSocket.__init__, "_qcmb_hook", False):
        problems.append("RecordSocket.__init__ is not hooked (install_hooks() was not called in this process)")
    if not getattr(RecordSocket.update_failed_service, "_qcmb_hook", False):
        problems.append("RecordSocket.update_failed_service is not hooked")
    if "qcmb_fractal.plugin.server.record_routes" not in sys.modules:
        problems.append("the qcmb_manybody routes were never added to the api_v1 blueprint")
    return problems


def check_startup(db_config: DatabaseConfig | None) -> None:
    """Refuse to start, with every reason at once, unless QCFractal version, hooks and database all hold."""
    from qcmb_fractal.plugin.server.install import schema_problems

    problems = [p for p in [version_problem()] if p] + hook_problems()
    if db_config is not None and not problems:
        problems += schema_problems(db_config)
    if problems:
        raise PluginStartupError(
            "qcmb-fractal server plugin cannot start:\n  - "
            + "\n  - ".join(problems)
            + "\nRun `qcmb-fractal-server upgrade-db --config <server config>` to create or upgrade the plugin's "
            "tables and views, and start the server with `qcmb-fractal-server start`."
        )
