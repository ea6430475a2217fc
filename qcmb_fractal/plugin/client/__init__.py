"""Client side of the qcmb_manybody record type: qcportal models and add/get/query functions."""

from qcmb_fractal.plugin.client.client import (
    QCMBClientMixin,
    QCMBPortalClient,
    add_qcmb_manybodys,
    connect,
    get_qcmb_manybodys,
    qcmb_level_status,
    query_qcmb_manybodys,
    simple_specification,
)
from qcmb_fractal.plugin.client.errors import QCMBNotServedError, QCMBPermissionError
from qcmb_fractal.plugin.client.record_models import (
    QCMBCluster,
    QCMBLevelStatus,
    QCMBManyBodyRecord,
    QCMBSpecification,
)

__all__ = [
    "QCMBClientMixin",
    "QCMBCluster",
    "QCMBLevelStatus",
    "QCMBManyBodyRecord",
    "QCMBNotServedError",
    "QCMBPermissionError",
    "QCMBPortalClient",
    "QCMBSpecification",
    "add_qcmb_manybodys",
    "connect",
    "get_qcmb_manybodys",
    "qcmb_level_status",
    "query_qcmb_manybodys",
    "simple_specification",
]
