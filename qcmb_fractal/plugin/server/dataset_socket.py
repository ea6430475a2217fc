"""Dataset socket of qcmb_manybody: QCFractal's BaseDatasetSocket with this type's entries and specifications.

Everything generic (status, submit bookkeeping, fetch, delete, rename, copy, views) is QCFractal's; this socket
stores specifications (once per distinct content), turns new entries into rows, and submits an entry ×
specification pair as a qcmb_manybody record through the record socket, so a dataset's records are refused,
deduplicated (``find_existing``) and limited exactly as records submitted one by one.
"""

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from qcfractal.components.base_dataset_socket import BaseDatasetSocket
from qcportal.metadata_models import InsertCountsMetadata, InsertMetadata
from qcportal.record_models import PriorityEnum
from sqlalchemy import insert, literal, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from qcmb_fractal.plugin import RECORD_TYPE
from qcmb_fractal.plugin.client.dataset_models import QCMBDatasetNewEntry
from qcmb_fractal.plugin.client.record_models import QCMBSpecification
from qcmb_fractal.plugin.server.dataset_db_models import (
    QCMBDatasetEntryORM,
    QCMBDatasetORM,
    QCMBDatasetRecordItemORM,
    QCMBDatasetSpecificationORM,
    QCMBSpecificationORM,
)
from qcmb_fractal.plugin.server.record_db_models import QCMBManyBodyRecordORM
from qcmb_fractal.plugin.server.record_socket import specification_hash


class QCMBDatasetSocket(BaseDatasetSocket):
    """Socket for qcmb_manybody datasets"""

    dataset_orm = QCMBDatasetORM
    specification_orm = QCMBDatasetSpecificationORM
    entry_orm = QCMBDatasetEntryORM
    record_item_orm = QCMBDatasetRecordItemORM
    record_orm = QCMBManyBodyRecordORM

    def __init__(self, root_socket) -> None:
        BaseDatasetSocket.__init__(self, root_socket)
        self._logger = logging.getLogger(__name__)

    def _add_specification(self, session: Session, specification: QCMBSpecification) -> tuple[InsertMetadata, int]:
        """The id of the stored specification with this content, stored now if new."""
        spec_hash = specification_hash(specification)
        stmt = (
            pg_insert(QCMBSpecificationORM)
            .values(specification_hash=spec_hash, specification=specification.model_dump(mode="json"))
            .on_conflict_do_nothing(index_elements=[QCMBSpecificationORM.specification_hash])
            .returning(QCMBSpecificationORM.id)
        )
        spec_id = session.execute(stmt).scalar_one_or_none()
        if spec_id is not None:
            return InsertMetadata(inserted_idx=[0]), spec_id
        stmt = select(QCMBSpecificationORM.id).where(QCMBSpecificationORM.specification_hash == spec_hash)
        return InsertMetadata(existing_idx=[0]), session.execute(stmt).scalar_one()

    def _create_entries(
        self, session: Session, dataset_id: int, new_entries: Sequence[QCMBDatasetNewEntry]
    ) -> list[QCMBDatasetEntryORM]:
        meta, mol_ids = self.root_socket.molecules.add_mixed([e.initial_molecule for e in new_entries], session=session)
        if not meta.success:
            raise RuntimeError("cannot add the entries' molecules: " + meta.error_string)
        return [
            QCMBDatasetEntryORM(
                dataset_id=dataset_id,
                name=entry.name,
                comment=entry.comment,
                initial_molecule_id=mol_id,
                attributes=entry.attributes,
            )
            for entry, mol_id in zip(new_entries, mol_ids, strict=True)
        ]

    def _submit(
        self,
        session: Session,
        dataset_id: int,
        entry_orm: Iterable[QCMBDatasetEntryORM],
        specification_orm: Iterable[QCMBDatasetSpecificationORM],
        existing_records: Iterable[tuple[str, str]],
        compute_tag: str,
        compute_priority: PriorityEnum,
        creator_user_id: int | None,
        find_existing: bool,
    ) -> InsertCountsMetadata:
        """One record per entry × specification not in the dataset yet; the record socket checks each input."""
        existing = {tuple(x) for x in existing_records}
        entries = list(entry_orm)
        n_inserted = n_existing = 0
        for spec in specification_orm:
            new = [e for e in entries if (e.name, spec.name) not in existing]
            if not new:
                continue
            meta, record_ids = self.root_socket.records.get_socket(RECORD_TYPE).add(
                initial_molecules=[e.initial_molecule_id for e in new],
                spec=QCMBSpecification(**spec.specification.specification),
                compute_tag=compute_tag,
                compute_priority=compute_priority,
                creator_user=creator_user_id,
                find_existing=find_existing,
                names=[f"entry {e.name!r} with specification {spec.name!r}" for e in new],
                session=session,
            )
            if not meta.success:
                raise RuntimeError(f"cannot add records for specification {spec.name!r}: " + meta.error_string)
            session.add_all(
                QCMBDatasetRecordItemORM(
                    dataset_id=dataset_id, entry_name=e.name, specification_name=spec.name, record_id=record_id
                )
                for e, record_id in zip(new, record_ids, strict=True)
            )
            n_inserted += meta.n_inserted
            n_existing += meta.n_existing
        return InsertCountsMetadata(n_inserted=n_inserted, n_existing=n_existing)

    def _copy_entries(
        self,
        session: Session,
        source_dataset_id: int,
        destination_dataset_id: int,
        entry_names: Iterable[str] | None = None,
    ) -> None:
        columns: list[Any] = [
            QCMBDatasetEntryORM.name,
            QCMBDatasetEntryORM.comment,
            QCMBDatasetEntryORM.initial_molecule_id,
            QCMBDatasetEntryORM.attributes,
        ]
        select_stmt = select(literal(destination_dataset_id), *columns).where(
            QCMBDatasetEntryORM.dataset_id == source_dataset_id
        )
        if entry_names is not None:
            select_stmt = select_stmt.where(QCMBDatasetEntryORM.name.in_(entry_names))
        stmt = insert(QCMBDatasetEntryORM).from_select([QCMBDatasetEntryORM.dataset_id, *columns], select_stmt)
        session.execute(stmt)
