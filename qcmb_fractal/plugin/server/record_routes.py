"""HTTP routes of qcmb_manybody on QCFractal's api_v1 blueprint.

No ``from __future__ import annotations`` here: QCFractal's ``@serialization`` reads the annotations at
run time to parse request bodies and serialize responses.
"""

from typing import Any

from flask import current_app, g
from qcfractal.flask_app import storage_socket
from qcfractal.flask_app.api_v1.blueprint import api_v1
from qcfractal.flask_app.decorators import check_permissions, serialization
from qcportal.exceptions import LimitExceededError
from qcportal.metadata_models import InsertMetadata
from qcportal.utils import calculate_limit

from qcmb_fractal.plugin import RECORD_TYPE
from qcmb_fractal.plugin.client.record_models import QCMBAddBody, QCMBQueryFilters


def _socket():
    return storage_socket.records.get_socket(RECORD_TYPE)


@api_v1.route(f"/records/{RECORD_TYPE}/bulkCreate", methods=["POST"])
@check_permissions("records", "add")
@serialization()
def add_qcmb_manybody_records_v1(body_data: QCMBAddBody) -> tuple[InsertMetadata, list[int | None]]:
    limit = current_app.config["QCFRACTAL_CONFIG"].api_limits.add_records
    if len(body_data.initial_molecules) > limit:
        raise LimitExceededError(
            f"Cannot add {len(body_data.initial_molecules)} {RECORD_TYPE} records - limit is {limit}"
        )
    return _socket().add(
        initial_molecules=body_data.initial_molecules,
        spec=body_data.specification,
        compute_tag=body_data.compute_tag,
        compute_priority=body_data.compute_priority,
        creator_user=g.username,
        find_existing=body_data.find_existing,
    )


@api_v1.route(f"/records/{RECORD_TYPE}/query", methods=["POST"])
@check_permissions("records", "read")
@serialization()
def query_qcmb_manybody_v1(body_data: QCMBQueryFilters) -> list[int]:
    max_limit = current_app.config["QCFRACTAL_CONFIG"].api_limits.get_records
    body_data.limit = calculate_limit(max_limit, body_data.limit)
    return _socket().query(body_data)


@api_v1.route(f"/records/{RECORD_TYPE}/<int:record_id>/clusters", methods=["GET"])
@check_permissions("records", "read")
@serialization()
def get_qcmb_manybody_clusters_v1(record_id: int) -> list[dict[str, Any]]:
    return _socket().get_clusters(record_id)


@api_v1.route(f"/records/{RECORD_TYPE}/<int:record_id>/result", methods=["GET"])
@check_permissions("records", "read")
@serialization()
def get_qcmb_manybody_result_v1(record_id: int) -> dict[str, Any] | None:
    return _socket().get_result(record_id)


@api_v1.route(f"/records/{RECORD_TYPE}/<int:record_id>/level_status", methods=["GET"])
@check_permissions("records", "read")
@serialization()
def get_qcmb_manybody_level_status_v1(record_id: int) -> list[dict[str, int]]:
    return _socket().get_level_status(record_id)
