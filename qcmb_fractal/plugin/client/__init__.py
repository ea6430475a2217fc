"""Client side of the qcmb_manybody record and dataset types: qcportal models and add/get/query functions.

Importing this package registers the ``qcmb_manybody`` dataset type with QCPortal, so a plain ``PortalClient``'s
``add_dataset("qcmb_manybody", name)`` and ``get_dataset("qcmb_manybody", name)`` return a :class:`QCMBDataset`.
"""

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
from qcmb_fractal.plugin.client.dataset_models import (
    QCMBDataset,
    QCMBDatasetEntry,
    QCMBDatasetNewEntry,
    QCMBDatasetSpecification,
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
    "QCMBDataset",
    "QCMBDatasetEntry",
    "QCMBDatasetNewEntry",
    "QCMBDatasetSpecification",
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
