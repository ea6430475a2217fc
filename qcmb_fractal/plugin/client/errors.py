"""What a refused qcmb_manybody request means, as exceptions a QCPortal user can act on.

QCPortal raises one ``PortalRequestError`` for every HTTP error; the plugin's client functions turn the
answers that have one meaning into their own class: 400 is bad input (``InputError``), 401/403 a user
without the right role, 404 a server without the plugin. Anything else stays QCPortal's error.
"""

import contextlib
from collections.abc import Iterator

from qcportal.client_base import PortalRequestError

from qcmb_fractal.errors import InputError
from qcmb_fractal.plugin import RECORD_TYPE


class QCMBPermissionError(PermissionError):
    """The server refused this user the request (HTTP 401/403): log in as a user whose role allows it."""


class QCMBNotServedError(RuntimeError):
    """The server has no qcmb_manybody routes (HTTP 404): it runs QCFractal without the qcmb-fractal plugin."""


def translated(err: PortalRequestError) -> Exception:
    """The plugin's exception for a QCPortal request error, or the error itself when its status says nothing more."""
    message = str(err.details.get("msg") or err.msg) if isinstance(err.details, dict) else err.msg
    if err.status_code == 400:
        return InputError(message)
    if err.status_code in (401, 403):
        return QCMBPermissionError(
            f"the server refused this request (HTTP {err.status_code}): {message}. Log in as a user whose role "
            "allows it (QCPORTAL_USERNAME/QCPORTAL_PASSWORD, QCPORTAL_API_TOKEN, or qcportal_config.yaml)."
        )
    if err.status_code == 404:
        return QCMBNotServedError(
            f"this server does not serve {RECORD_TYPE} (is the plugin loaded?): HTTP 404 for a {RECORD_TYPE} route. "
            "Its operator installs qcmb-fractal[server] beside QCFractal and runs `qcfractal-server upgrade-db`."
        )
    return err


@contextlib.contextmanager
def plugin_errors() -> Iterator[None]:
    """Re-raise QCPortal request errors of the plugin's routes as :func:`translated` says."""
    try:
        yield
    except PortalRequestError as err:
        better = translated(err)
        if better is err:
            raise
        raise better from None
