"""The plugin's section of a QCFractal server configuration: ``qcmb_fractal:`` in the server's YAML file.

QCFractal's ``FractalConfig`` forbids unknown keys, so :mod:`.hooks` adds this section to it as a field of
its own: it is read, validated, shown by ``qcfractal-server info`` and set from the environment
(``QCF_QCMB_FRACTAL__MAX_CHILDREN_PER_RECORD``) exactly like QCFractal's own sections. This module imports
only pydantic, because it is loaded whenever ``qcfractal.config`` is.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

CONFIG_SECTION = "qcmb_fractal"

# What one record may cost the server: its plan and service state (~4 KB per child in the job runner), its rows, and
# a deletion that takes all its children along; 10,000 children is an (H2O)40 MBE(3) or a 100-water MBE(2).
DEFAULT_MAX_CHILDREN = 10_000
# Children one service iteration creates at most: at 120-320 children per second (measured on a loaded 2-core
# machine, benchmarks/bench_plugin_steps.py) an iteration takes seconds whatever the record's size. A record hands
# out at most this many children per service_frequency, so fast programs on many workers may want more.
DEFAULT_MAX_CHILDREN_PER_ITERATION = 1_000


class QCMBServerConfig(BaseModel):
    """Settings of the qcmb-fractal plugin (the ``qcmb_manybody`` record type)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    max_children_per_record: int = Field(DEFAULT_MAX_CHILDREN, ge=1)
    """Most fragment calculations (singlepoint children) one qcmb_manybody record may need. Larger records are
    refused at submission, and records waiting to start are refused when they start. Counted from binomials,
    before anything is enumerated. At most the planner's own limit (200,000)."""

    max_children_per_iteration: int = Field(DEFAULT_MAX_CHILDREN_PER_ITERATION, ge=1)
    """Most children one service iteration of a record creates. A bigger record gets the rest in later iterations,
    each started as soon as the previous batch's children are done, while the newest batch keeps the managers busy
    (``QCF_QCMB_FRACTAL__MAX_CHILDREN_PER_ITERATION``)."""

    @field_validator("max_children_per_record", mode="after")
    @classmethod
    def _within_planner_limit(cls, value: int) -> int:
        from qcmb_fractal.plan.planner import MAX_TASKS  # only when an operator sets it: the planner is heavy

        if value > MAX_TASKS:
            raise ValueError(f"must be at most {MAX_TASKS:,}, the most fragment calculations qcmb-fractal plans")
        return value


def plugin_config(qcf_config: Any) -> QCMBServerConfig:
    """The plugin's settings in a FractalConfig; defaults for one built before the section existed."""
    return getattr(qcf_config, CONFIG_SECTION, None) or QCMBServerConfig()
