"""The ``qcmb_manybody`` dataset type in QCPortal: entries (clusters) × specifications, one record each.

Defining :class:`QCMBDataset` registers it with QCPortal's ``BaseDataset`` under its ``dataset_type``, so a
plain ``PortalClient`` returns it from ``add_dataset("qcmb_manybody", name)`` and ``get_dataset(...)`` once
this module is imported (``import qcmb_fractal.plugin.client`` does). Everything else a QCPortal dataset
offers (submit, status, iterate_records, get_record, get_properties_df, deleting and renaming entries and
specifications, copies and views) is QCPortal's own ``BaseDataset`` on QCFractal's dataset routes.
"""

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from qcportal.dataset_models import BaseDataset
from qcportal.internal_jobs import InternalJob
from qcportal.metadata_models import InsertMetadata
from qcportal.molecules import Molecule

from qcmb_fractal.plugin import DATASET_TYPE
from qcmb_fractal.plugin.client.record_models import QCMBManyBodyRecord, QCMBSpecification


class QCMBDatasetNewEntry(BaseModel):
    """A cluster to add: its molecule must carry fragments (the expansion's bodies)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    initial_molecule: Molecule | int
    attributes: dict[str, Any] = {}
    comment: str | None = None


class QCMBDatasetEntry(QCMBDatasetNewEntry):
    initial_molecule: Molecule


class QCMBDatasetSpecification(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    specification: QCMBSpecification
    description: str | None = None


class QCMBDatasetRecordItem(BaseModel):
    entry_name: str
    specification_name: str
    record_id: int
    record: QCMBManyBodyRecord | None


class QCMBDataset(BaseDataset):
    """A dataset of qcmb_manybody records: ``add_entry``, ``add_specification``, then ``submit``."""

    dataset_type: Literal["qcmb_manybody"] = DATASET_TYPE

    _entry_type = QCMBDatasetEntry
    _new_entry_type = QCMBDatasetNewEntry
    _specification_type = QCMBDatasetSpecification
    _record_item_type = QCMBDatasetRecordItem
    _record_type = QCMBManyBodyRecord

    def add_specification(
        self, name: str, specification: QCMBSpecification | dict[str, Any], description: str | None = None
    ) -> InsertMetadata:
        spec = QCMBDatasetSpecification(name=name, specification=specification, description=description)
        return self._add_specifications(spec)

    def add_entries(self, entries: QCMBDatasetNewEntry | Iterable[QCMBDatasetNewEntry]) -> InsertMetadata:
        return self._add_entries(entries)

    def background_add_entries(self, entries: QCMBDatasetNewEntry | Iterable[QCMBDatasetNewEntry]) -> InternalJob:
        return self._background_add_entries(entries)

    def add_entry(
        self,
        name: str,
        initial_molecule: int | Molecule,
        comment: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> InsertMetadata:
        entry = QCMBDatasetNewEntry(
            name=name, initial_molecule=initial_molecule, attributes=attributes or {}, comment=comment
        )
        return self.add_entries(entry)
