"""Tables of the qcmb_manybody record type, laid out like QCFractal's own manybody component.

The record table joins ``base_record`` with its own polymorphic identity; the cluster table maps every
unique fragment calculation (by qcmb-fractal task hash) to the singlepoint record that computes it.
"""

from typing import ClassVar

from qcfractal.components.molecules.db_models import MoleculeORM
from qcfractal.components.record_db_models import BaseRecordORM
from qcfractal.components.singlepoint.record_db_models import SinglepointRecordORM
from qcfractal.db_socket import BaseORM
from qcportal.utils import now_at_utc
from sqlalchemy import (
    DDL,
    TIMESTAMP,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    event,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import deferred, relationship

from qcmb_fractal.plugin import RECORD_TYPE


class QCMBClusterORM(BaseORM):
    """One unique fragment calculation of an expansion; its singlepoint is created when the driver hands it out."""

    __tablename__ = "qcmb_manybody_cluster"

    id = Column(Integer, primary_key=True)
    manybody_id = Column(Integer, ForeignKey("qcmb_manybody_record.id", ondelete="cascade"), nullable=False)
    task_hash = Column(String, nullable=False)
    mc_level = Column(String, nullable=False)
    level = Column(Integer, nullable=False)
    fragments = Column(ARRAY(Integer), nullable=False)
    basis = Column(ARRAY(Integer), nullable=False)
    labels = Column(JSONB, nullable=False)

    molecule_id = Column(Integer, ForeignKey(MoleculeORM.id), nullable=True)
    singlepoint_id = Column(Integer, ForeignKey(SinglepointRecordORM.id), nullable=True)

    singlepoint_record = relationship(SinglepointRecordORM)

    __table_args__ = (
        CheckConstraint("array_length(fragments, 1) > 0", name="ck_qcmb_manybody_cluster_fragments"),
        UniqueConstraint("manybody_id", "task_hash", name="ux_qcmb_manybody_cluster_unique"),
        Index("ix_qcmb_manybody_cluster_singlepoint_id", "singlepoint_id"),
        Index("ix_qcmb_manybody_cluster_molecule_id", "molecule_id"),
    )

    _qcportal_model_excludes: ClassVar[list[str]] = ["id", "manybody_id", "singlepoint_record"]


class QCMBManyBodyRecordORM(BaseRecordORM):
    __tablename__ = "qcmb_manybody_record"

    id = Column(Integer, ForeignKey(BaseRecordORM.id, ondelete="cascade"), primary_key=True)
    initial_molecule_id = Column(Integer, ForeignKey(MoleculeORM.id), nullable=False)
    specification = Column(JSONB, nullable=False)
    specification_hash = Column(String, nullable=False)
    # The whole ManyBodyResult (energies, gradients, hessians per bsse type and level); large, so loaded on request.
    result = deferred(Column(JSONB, nullable=True))

    initial_molecule = relationship(MoleculeORM)
    clusters = relationship(
        QCMBClusterORM, cascade="all, delete-orphan", passive_deletes=True, order_by=QCMBClusterORM.id
    )

    __table_args__ = (
        Index("ix_qcmb_manybody_record_initial_molecule_id", "initial_molecule_id"),
        Index("ix_qcmb_manybody_record_specification_hash", "specification_hash"),
    )

    __mapper_args__: ClassVar[dict[str, str]] = {"polymorphic_identity": RECORD_TYPE}

    _qcportal_model_excludes: ClassVar[list[str]] = [*BaseRecordORM._qcportal_model_excludes, "specification_hash"]

    @property
    def short_description(self) -> str:
        mb = self.specification.get("manybody", {})
        bsse = ",".join(mb.get("keywords", {}).get("bsse_type", []) or ["nocp"])
        return f"{self.initial_molecule.identifiers['molecular_formula']} {mb.get('driver', '')} {bsse}"


class QCMBSchemaVersionORM(BaseORM):
    """The plugin's own schema stamp, so start-up can refuse a database that init-db/upgrade-db never touched."""

    __tablename__ = "qcmb_plugin_version"

    id = Column(Integer, primary_key=True)
    schema_version = Column(Integer, nullable=False)
    package_version = Column(String, nullable=False)
    installed_on = Column(TIMESTAMP(timezone=True), default=now_at_utc, nullable=False)


# Deleting the record row must delete its base_record row too, as for every QCFractal record table.
DELETE_TRIGGER_NAME = "qca_qcmb_manybody_record_delete_base_tr"
_del_baserecord_trigger = DDL(f"""
    CREATE TRIGGER {DELETE_TRIGGER_NAME}
    AFTER DELETE ON qcmb_manybody_record
    FOR EACH ROW EXECUTE PROCEDURE qca_base_record_delete();
    """)

event.listen(QCMBManyBodyRecordORM.__table__, "after_create", _del_baserecord_trigger.execute_if(dialect="postgresql"))

record_direct_children_select = [
    select(BaseRecordORM.id.label("parent_id"), QCMBClusterORM.singlepoint_id.label("child_id"))
    .join(QCMBClusterORM, BaseRecordORM.id == QCMBClusterORM.manybody_id)
    .where(BaseRecordORM.record_type == RECORD_TYPE)
    .where(QCMBClusterORM.singlepoint_id.is_not(None)),
]

record_children_select = record_direct_children_select

PLUGIN_TABLES = [QCMBManyBodyRecordORM.__table__, QCMBClusterORM.__table__, QCMBSchemaVersionORM.__table__]
