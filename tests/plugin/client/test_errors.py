"""Each HTTP answer a qcmb_manybody route can give maps to the exception a user acts on."""

import pytest
from qcportal.client_base import PortalRequestError

from qcmb_fractal.errors import InputError
from qcmb_fractal.plugin.client import QCMBNotServedError, QCMBPermissionError
from qcmb_fractal.plugin.client.errors import plugin_errors


def refused(status: int, msg: str) -> PortalRequestError:
    return PortalRequestError(f"Request failed: {msg}", status, {"msg": msg})


@pytest.mark.parametrize(
    ("status", "msg", "expected", "says"),
    [
        (400, "molecule 0 (id 7): this expansion needs 92 fragment calculations", InputError,
         "molecule 0 (id 7): this expansion needs 92 fragment calculations"),
        (401, "Server requires login", QCMBPermissionError,
         "the server refused this request (HTTP 401): Server requires login. Log in as a user whose role allows it"),
        (403, "Forbidden: Role 'read' is not authorized to use action 'add' on resource 'records'", QCMBPermissionError,
         "(HTTP 403): Forbidden: Role 'read' is not authorized"),
        (404, "404 Not Found: The requested URL was not found on the server.", QCMBNotServedError,
         "this server does not serve qcmb_manybody (is the plugin loaded?)"),
    ],
    ids=["400", "401", "403", "404"],
)  # fmt: skip
def test_http_answers_map_to_their_classes(status, msg, expected, says):
    with pytest.raises(expected) as raised, plugin_errors():
        raise refused(status, msg)
    assert str(raised.value).startswith(says) if status == 400 else says in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__  # no QCPortal traceback behind it


@pytest.mark.parametrize("status", [413, 429, 500, 502])
def test_other_answers_stay_qcportals(status):
    error = refused(status, "Internal Server Error")
    with pytest.raises(PortalRequestError) as raised, plugin_errors():
        raise error
    assert raised.value is error
