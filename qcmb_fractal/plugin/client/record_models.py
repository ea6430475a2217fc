"""qcportal models of the qcmb_manybody record type, shared by the server (request bodies) and the client."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from qcmanybody.models.v2 import ManyBodyResult
from qcportal.base_models import RestModelBase
from qcportal.molecules import Molecule
from qcportal.record_models import BaseRecord, RecordAddBodyBase, RecordQueryFilters

from qcmb_fractal.plan.screening import EXTRAS_KEY, ScreeningSettings
from qcmb_fractal.plugin import PROGRAM, RECORD_TYPE
from qcmb_fractal.plugin.client.errors import plugin_errors


class QCMBSpecification(BaseModel):
    """What to compute: a QCManyBody v2 ``ManyBodySpecification`` plus how the service schedules it.

    ``manybody`` is kept as QCManyBody's own schema (driver, keywords incl. bsse_type/levels/
    supersystem_ie_only, and the model chemistries) so nothing of it is lost in translation.
    ``screening`` asks for an energy-screened expansion (docs/screening.md); given instead in
    ``manybody.extras.qcmb_fractal.screening`` it is moved here, so one expansion has one specification.
    """

    model_config = ConfigDict(extra="forbid")

    program: Literal["qcmb-fractal"] = PROGRAM
    manybody: dict[str, Any]
    mode: Literal["levels", "eager"] = "eager"
    max_attempts: int = Field(3, ge=1, le=20)
    screening: ScreeningSettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _screening_in_one_place(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("manybody"), dict):
            return data
        extras = data["manybody"].get("extras") or {}
        ours = extras.get(EXTRAS_KEY) if isinstance(extras, dict) else None
        if not isinstance(ours, dict) or "screening" not in ours:
            return data
        if data.get("screening") is not None:
            raise ValueError("screening is given twice (screening and manybody.extras.qcmb_fractal.screening)")
        rest = {k: v for k, v in ours.items() if k != "screening"}
        extras = {k: v for k, v in extras.items() if k != EXTRAS_KEY} | ({EXTRAS_KEY: rest} if rest else {})
        manybody = {k: v for k, v in data["manybody"].items() if k != "extras"} | ({"extras": extras} if extras else {})
        return {**data, "manybody": manybody, "screening": ours["screening"]}


class QCMBInput(RestModelBase):
    record_type: Literal["qcmb_manybody"] = RECORD_TYPE
    specification: QCMBSpecification
    initial_molecule: int | Molecule


class QCMBMultiInput(RestModelBase):
    specification: QCMBSpecification
    initial_molecules: list[int | Molecule]


class QCMBAddBody(RecordAddBodyBase, QCMBMultiInput):
    pass


class QCMBQueryFilters(RecordQueryFilters):
    initial_molecule_id: list[int] | None = None
    mode: list[Literal["levels", "eager"]] | None = None


class QCMBCluster(BaseModel):
    """One unique fragment calculation of the expansion and the singlepoint record that computes it."""

    model_config = ConfigDict(extra="forbid")

    task_hash: str
    mc_level: str
    level: int
    fragments: list[int]
    basis: list[int]
    labels: list[str]
    molecule_id: int | None = None
    singlepoint_id: int | None = None


class QCMBLevelStatus(BaseModel):
    """Done/running/errored children of one n-body level (the record's status view).

    ``waiting_reason`` is QCFractal's answer for one waiting child of the level, e.g. "No active managers" or
    "No manager matches programs & tags: <manager>: Manager missing programs: {'nwchem'}".
    """

    level: int
    total: int
    complete: int = 0
    running: int = 0
    waiting: int = 0
    error: int = 0
    waiting_reason: str | None = None


class QCMBManyBodyRecord(BaseRecord):
    record_type: Literal["qcmb_manybody"] = RECORD_TYPE
    specification: QCMBSpecification
    initial_molecule_id: int

    initial_molecule_: Molecule | None = Field(None, alias="initial_molecule")
    clusters_: list[QCMBCluster] | None = Field(None, alias="clusters")
    result_: dict[str, Any] | None = Field(None, alias="result")

    def _fetch_initial_molecule(self) -> None:
        self._assert_online()
        self.initial_molecule_ = self._client.get_molecules([self.initial_molecule_id])[0]

    def _fetch_clusters(self) -> None:
        self._assert_online()
        with plugin_errors():
            self.clusters_ = self._client.make_request(
                "get", f"api/v1/records/{RECORD_TYPE}/{self.id}/clusters", list[QCMBCluster]
            )

    def _fetch_result(self) -> None:
        self._assert_online()
        with plugin_errors():
            self.result_ = self._client.make_request(
                "get", f"api/v1/records/{RECORD_TYPE}/{self.id}/result", dict[str, Any] | None
            )

    @property
    def initial_molecule(self) -> Molecule:
        if self.initial_molecule_ is None:
            self._fetch_initial_molecule()
        return self.initial_molecule_

    @property
    def clusters(self) -> list[QCMBCluster]:
        if self.clusters_ is None:
            self._fetch_clusters()
        return self.clusters_

    @property
    def result(self) -> ManyBodyResult | None:
        """The finished expansion as QCManyBody's own ManyBodyResult (None until the record completes)."""
        if self.result_ is None:
            self._fetch_result()
        return None if self.result_ is None else ManyBodyResult(**self.result_)

    def level_status(self) -> list[QCMBLevelStatus]:
        self._assert_online()
        with plugin_errors():
            return self._client.make_request(
                "get", f"api/v1/records/{RECORD_TYPE}/{self.id}/level_status", list[QCMBLevelStatus]
            )

    @property
    def cluster_singlepoints(self) -> dict[str, int | None]:
        """QCManyBody label → singlepoint record id."""
        return {label: c.singlepoint_id for c in self.clusters for label in c.labels}
