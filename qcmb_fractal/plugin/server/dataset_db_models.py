"""Tables of the qcmb_manybody dataset type, laid out like QCFractal's own manybody dataset component.

A dataset has entries (named initial molecules), specifications (named references to a stored
:class:`QCMBSpecificationORM`) and one record item per entry × specification that was submitted. Deleting an
entry or a specification cascades to its record items only: the records themselves stay (QCFractal's
``delete_entries(..., delete_records=True)`` deletes them explicitly). Renames cascade into the record items.

Records keep their specification inline (``qcmb_manybody_record.specification``); the specification table
exists because QCFractal's dataset machinery joins, copies and fetches specifications by id.
"""

from typing import Any, ClassVar

from qcfractal.components.dataset_db_models import BaseDatasetORM
from qcfractal.components.molecules.db_models import MoleculeORM
from qcfractal.db_socket import BaseORM
from sqlalchemy import Column, ForeignKey, ForeignKeyConstraint, Index, Integer, String, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import relationship

from qcmb_fractal.plugin import DATASET_TYPE
from qcmb_fractal.plugin.server.record_db_models import QCMBManyBodyRecordORM


class QCMBSpecificationORM(BaseORM):
    """One qcmb_manybody specification (QCMBSpecification as JSON), stored once per distinct content."""

    __tablename__ = "qcmb_manybody_specification"

    id = Column(Integer, primary_key=True)
    specification_hash = Column(String, nullable=False, unique=True)
    specification = Column(JSONB, nullable=False)

    def model_dict(self, exclude: Any = None) -> dict[str, Any]:
        """The QCMBSpecification itself: the dataset's specification models parse it as one."""
        return dict(self.specification)


class QCMBDatasetEntryORM(BaseORM):
    __tablename__ = "qcmb_manybody_dataset_entry"

    dataset_id = Column(Integer, ForeignKey("qcmb_manybody_dataset.id", ondelete="cascade"), primary_key=True)
    name = Column(String, primary_key=True)
    comment = Column(String)
    initial_molecule_id = Column(Integer, ForeignKey(MoleculeORM.id), nullable=False)
    attributes = Column(JSONB, nullable=False)

    initial_molecule = relationship(MoleculeORM, lazy="joined")

    __table_args__ = (
        Index("ix_qcmb_manybody_dataset_entry_dataset_id", "dataset_id"),
        Index("ix_qcmb_manybody_dataset_entry_name", "name"),
        Index("ix_qcmb_manybody_dataset_entry_initial_molecule_id", "initial_molecule_id"),
    )

    _qcportal_model_excludes: ClassVar[list[str]] = ["dataset_id", "initial_molecule_id"]


class QCMBDatasetSpecificationORM(BaseORM):
    __tablename__ = "qcmb_manybody_dataset_specification"

    dataset_id = Column(Integer, ForeignKey("qcmb_manybody_dataset.id", ondelete="cascade"), primary_key=True)
    name = Column(String, primary_key=True)
    description = Column(String, nullable=True)
    specification_id = Column(Integer, ForeignKey(QCMBSpecificationORM.id), nullable=False)

    specification = relationship(QCMBSpecificationORM)

    __table_args__ = (
        Index("ix_qcmb_manybody_dataset_specification_dataset_id", "dataset_id"),
        Index("ix_qcmb_manybody_dataset_specification_name", "name"),
        Index("ix_qcmb_manybody_dataset_specification_specification_id", "specification_id"),
    )

    _qcportal_model_excludes: ClassVar[list[str]] = ["dataset_id", "specification_id"]


class QCMBDatasetRecordItemORM(BaseORM):
    __tablename__ = "qcmb_manybody_dataset_record"

    dataset_id = Column(Integer, ForeignKey("qcmb_manybody_dataset.id", ondelete="cascade"), primary_key=True)
    entry_name = Column(String, primary_key=True)
    specification_name = Column(String, primary_key=True)
    # No cascade from the record: QCFractal refuses to hard-delete a record a dataset still holds.
    record_id = Column(Integer, ForeignKey(QCMBManyBodyRecordORM.id), nullable=False)

    record = relationship(QCMBManyBodyRecordORM)

    __table_args__ = (
        ForeignKeyConstraint(
            ["dataset_id", "entry_name"],
            ["qcmb_manybody_dataset_entry.dataset_id", "qcmb_manybody_dataset_entry.name"],
            ondelete="cascade",
            onupdate="cascade",
        ),
        ForeignKeyConstraint(
            ["dataset_id", "specification_name"],
            ["qcmb_manybody_dataset_specification.dataset_id", "qcmb_manybody_dataset_specification.name"],
            ondelete="cascade",
            onupdate="cascade",
        ),
        Index("ix_qcmb_manybody_dataset_record_record_id", "record_id"),
    )

    _qcportal_model_excludes: ClassVar[list[str]] = ["dataset_id"]


class QCMBDatasetORM(BaseDatasetORM):
    __tablename__ = "qcmb_manybody_dataset"

    id = Column(Integer, ForeignKey(BaseDatasetORM.id, ondelete="cascade"), primary_key=True)

    __mapper_args__: ClassVar[dict[str, str]] = {"polymorphic_identity": DATASET_TYPE}


# This type's part of QCFractal's dataset_direct_records_view (see install.py), as each dataset component has.
dataset_records_select = [
    select(
        BaseDatasetORM.id.label("dataset_id"),
        QCMBDatasetRecordItemORM.entry_name.label("entry_name"),
        QCMBDatasetRecordItemORM.specification_name.label("specification_name"),
        QCMBDatasetRecordItemORM.record_id.label("record_id"),
    )
    .join(QCMBDatasetRecordItemORM, BaseDatasetORM.id == QCMBDatasetRecordItemORM.dataset_id)
    .where(BaseDatasetORM.dataset_type == DATASET_TYPE)
]

# In creation order (foreign keys); added in plugin schema 2.
DATASET_TABLES = [
    QCMBSpecificationORM.__table__,
    QCMBDatasetORM.__table__,
    QCMBDatasetEntryORM.__table__,
    QCMBDatasetSpecificationORM.__table__,
    QCMBDatasetRecordItemORM.__table__,
]
