import pytest
from pydantic import ValidationError
from qcportal.record_models import BaseRecord

from qcmb_fractal.plugin.client import QCMBManyBodyRecord, QCMBSpecification, simple_specification


def test_record_class_is_registered_by_record_type():
    assert BaseRecord.get_subclass("qcmb_manybody") is QCMBManyBodyRecord


def test_simple_specification_is_qcmanybody_schema():
    spec = simple_specification(program="nwchem", method="hf", basis="sto-3g", bsse=("cp", "nocp"), max_nbody=2)
    assert spec.mode == "eager" and spec.max_attempts == 3
    assert spec.manybody["keywords"] == {"bsse_type": ["cp", "nocp"], "max_nbody": 2, "levels": {2: "nwchem-hf/sto-3g"}}
    assert spec.manybody["specification"]["nwchem-hf/sto-3g"]["model"] == {"method": "hf", "basis": "sto-3g"}


def test_specification_rejects_unknown_modes_and_fields():
    with pytest.raises(ValidationError):
        QCMBSpecification(manybody={}, mode="sometimes")
    with pytest.raises(ValidationError):
        QCMBSpecification(manybody={}, colour="blue")
