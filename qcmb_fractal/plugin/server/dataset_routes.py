"""HTTP routes of the qcmb_manybody dataset type that QCFractal's generic dataset routes do not cover.

QCFractal's ``/datasets/<dataset_type>/...`` routes (create, status, submit, fetch, delete, rename, ...)
serve this type through its socket (see :mod:`.hooks`); only adding specifications and entries needs the
type's own request bodies. Permissions are QCFractal's dataset permissions, as for its own types.
No ``from __future__ import annotations``: QCFractal's ``@serialization`` reads the annotations at run time.
"""

from flask import g
from qcfractal.flask_app import storage_socket
from qcfractal.flask_app.api_v1.blueprint import api_v1
from qcfractal.flask_app.decorators import check_permissions, serialization
from qcportal.metadata_models import InsertMetadata

from qcmb_fractal.plugin import DATASET_TYPE
from qcmb_fractal.plugin.client.dataset_models import QCMBDatasetNewEntry, QCMBDatasetSpecification


def _socket():
    return storage_socket.datasets.get_socket(DATASET_TYPE)


@api_v1.route(f"/datasets/{DATASET_TYPE}/<int:dataset_id>/specifications", methods=["POST"])
@check_permissions("datasets", "modify")
@serialization()
def add_qcmb_manybody_dataset_specifications_v1(
    dataset_id: int, body_data: list[QCMBDatasetSpecification]
) -> InsertMetadata:
    return _socket().add_specifications(dataset_id, body_data)


@api_v1.route(f"/datasets/{DATASET_TYPE}/<int:dataset_id>/entries/bulkCreate", methods=["POST"])
@check_permissions("datasets", "modify")
@serialization()
def add_qcmb_manybody_dataset_entries_v1(dataset_id: int, body_data: list[QCMBDatasetNewEntry]) -> InsertMetadata:
    return _socket().add_entries(dataset_id, new_entries=body_data)


@api_v1.route(f"/datasets/{DATASET_TYPE}/<int:dataset_id>/background_add_entries", methods=["POST"])
@check_permissions("datasets", "modify")
@serialization()
def background_add_qcmb_manybody_dataset_entries_v1(dataset_id: int, body_data: list[QCMBDatasetNewEntry]) -> int:
    return _socket().background_add_entries(dataset_id, body_data, g.user_id)
