"""add_/get_/query_ functions for qcmb_manybody records that work on any plain ``PortalClient``.

They mirror QCPortal's own ``add_manybodys``/``get_manybodys``/``query_manybodys``; the same methods
are on :class:`QCMBClientMixin` for a client class of one's own (e.g. :class:`QCMBPortalClient`).
A refused request raises ``InputError`` (400), :class:`.QCMBPermissionError` (401/403) or
:class:`.QCMBNotServedError` (404: the server has no plugin); see :mod:`.errors`.
"""

from collections.abc import Collection, Iterable, Sequence
from typing import Any, Literal

from qcportal import PortalClient
from qcportal.metadata_models import InsertMetadata
from qcportal.molecules import Molecule
from qcportal.record_models import PriorityEnum, RecordQueryIterator, RecordStatusEnum
from qcportal.utils import make_list

from qcmb_fractal.errors import InputError
from qcmb_fractal.plan.screening import ScreeningSettings
from qcmb_fractal.plugin import RECORD_TYPE
from qcmb_fractal.plugin.client.errors import plugin_errors
from qcmb_fractal.plugin.client.record_models import (
    QCMBAddBody,
    QCMBLevelStatus,
    QCMBManyBodyRecord,
    QCMBQueryFilters,
    QCMBSpecification,
)


def connect(server: str | None = None, *, username: str | None = None) -> PortalClient:
    """A logged-in PortalClient, with the server and credentials found the way QCPortal users give them.

    ``server`` is an address or the name of an entry in ``qcportal_config.yaml`` (working directory, then
    ``~/.qca``); without it, ``QCPORTAL_ADDRESS`` or the file's own address. The user comes from ``username`` or
    ``QCPORTAL_USERNAME``, the password from ``QCPORTAL_PASSWORD`` or a prompt on a terminal;
    ``QCPORTAL_API_TOKEN`` replaces both. A refused login or an unreachable server raises InputError.
    """
    from qcmb_fractal.execute.backends.qcportal import connection_from_options

    return connection_from_options(server, username=username).connect()


def simple_specification(
    *,
    program: str,
    method: str,
    basis: str | None = None,
    driver: str = "energy",
    bsse: Sequence[str] = ("nocp",),
    max_nbody: int,
    keywords: dict[str, Any] | None = None,
    mode: Literal["levels", "eager"] = "eager",
    max_attempts: int = 3,
    screen: str | None = None,
    screen_threshold: float | None = None,
    screen_distance: float | None = None,
    screen_contact: float | None = None,
) -> QCMBSpecification:
    """A single-model-chemistry specification, the common case, without writing QCManyBody's schema by hand.

    ``screen="xtb/gfn1-xtb"`` (PROGRAM/METHOD[/BASIS]) screens the expansion with that model chemistry,
    keeping candidates whose increment is at least ``screen_threshold`` kcal/mol (docs/screening.md).
    """
    options = {"threshold": screen_threshold, "distance": screen_distance, "contact": screen_contact}
    options = {k: v for k, v in options.items() if v is not None}
    screening = None
    if screen is not None:
        screening = ScreeningSettings.from_model_string(screen, **options)
    elif options:
        raise InputError("screen_threshold, _distance and _contact need screen='PROGRAM/METHOD', e.g. 'xtb/gfn1-xtb'.")
    name = f"{program}-{method}" + (f"/{basis}" if basis else "")
    return QCMBSpecification(
        manybody={
            "driver": driver,
            "keywords": {"bsse_type": list(bsse), "max_nbody": max_nbody, "levels": {max_nbody: name}},
            "specification": {
                name: {
                    "program": program,
                    "driver": driver,
                    "model": {"method": method, "basis": basis},
                    "keywords": keywords or {},
                }
            },
        },
        mode=mode,
        max_attempts=max_attempts,
        screening=screening,
    )


def add_qcmb_manybodys(
    client: PortalClient,
    initial_molecules: int | Molecule | Sequence[int | Molecule],
    specification: QCMBSpecification | dict[str, Any],
    *,
    compute_tag: str = "*",
    compute_priority: PriorityEnum = PriorityEnum.normal,
    find_existing: bool = True,
) -> tuple[InsertMetadata, list[int]]:
    """Submit one qcmb_manybody record per molecule; the server's refusal of a bad input raises InputError."""
    body = QCMBAddBody(
        initial_molecules=make_list(initial_molecules),
        specification=specification,
        compute_tag=compute_tag,
        compute_priority=compute_priority,
        find_existing=find_existing,
    )
    with plugin_errors():
        return client.make_request(
            "post", f"api/v1/records/{RECORD_TYPE}/bulkCreate", tuple[InsertMetadata, list[int]], body=body
        )


def get_qcmb_manybodys(
    client: PortalClient,
    record_ids: int | Collection[int],
    missing_ok: bool = False,
    *,
    include: Iterable[str] | None = None,
) -> QCMBManyBodyRecord | list[QCMBManyBodyRecord | None] | None:
    with plugin_errors():
        return client._get_records_by_type("api/v1", QCMBManyBodyRecord, record_ids, missing_ok, include)


def query_qcmb_manybodys(
    client: PortalClient,
    *,
    record_id: int | Iterable[int] | None = None,
    status: RecordStatusEnum | Iterable[RecordStatusEnum] | None = None,
    initial_molecule_id: int | Iterable[int] | None = None,
    mode: str | Iterable[str] | None = None,
    limit: int | None = None,
    include: Iterable[str] | None = None,
) -> RecordQueryIterator[QCMBManyBodyRecord]:
    filters = {
        "record_id": None if record_id is None else make_list(record_id),
        "status": None if status is None else make_list(status),
        "initial_molecule_id": None if initial_molecule_id is None else make_list(initial_molecule_id),
        "mode": None if mode is None else make_list(mode),
        "limit": limit,
    }
    query = QCMBQueryFilters(**{k: v for k, v in filters.items() if v is not None})
    return QCMBRecordQueryIterator(client, query, QCMBManyBodyRecord, include)


class QCMBRecordQueryIterator(RecordQueryIterator[QCMBManyBodyRecord]):
    """QCPortal's record query iterator, with the plugin's error classes for each batch it fetches."""

    def _request(self) -> list[QCMBManyBodyRecord]:
        with plugin_errors():
            return super()._request()


def qcmb_level_status(client: PortalClient, record_id: int) -> list[QCMBLevelStatus]:
    """Done/running/waiting/errored children per n-body level, and why a level's children wait."""
    with plugin_errors():
        return client.make_request(
            "get", f"api/v1/records/{RECORD_TYPE}/{record_id}/level_status", list[QCMBLevelStatus]
        )


class QCMBClientMixin:
    """The functions above as methods, for ``class MyClient(QCMBClientMixin, PortalClient)``."""

    def add_qcmb_manybodys(self, initial_molecules, specification, **kwargs) -> tuple[InsertMetadata, list[int]]:
        return add_qcmb_manybodys(self, initial_molecules, specification, **kwargs)

    def get_qcmb_manybodys(self, record_ids, missing_ok: bool = False, *, include=None):
        return get_qcmb_manybodys(self, record_ids, missing_ok, include=include)

    def query_qcmb_manybodys(self, **filters) -> RecordQueryIterator[QCMBManyBodyRecord]:
        return query_qcmb_manybodys(self, **filters)

    def qcmb_level_status(self, record_id: int) -> list[QCMBLevelStatus]:
        return qcmb_level_status(self, record_id)


class QCMBPortalClient(QCMBClientMixin, PortalClient):
    """A PortalClient that also speaks qcmb_manybody."""
