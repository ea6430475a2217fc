"""A QCFractal record type, ``qcmb_manybody``, whose service runs qcmb-fractal's many-body driver, and a
dataset type of the same name holding such records.

The server half (``server``) needs qcfractal; the client half (``client``) needs only qcportal.
"""

RECORD_TYPE = "qcmb_manybody"
# The dataset type holding qcmb_manybody records (entries × specifications), named like QCFractal's own.
DATASET_TYPE = "qcmb_manybody"
PROGRAM = "qcmb-fractal"

# Bumped whenever the plugin's tables, views or trigger change; stored in the database by init-db/upgrade-db.
SCHEMA_VERSION = 2  # 2: the qcmb_manybody dataset tables; index on service_dependency.record_id

# QCFractal has no plugin API: the hooks reach into internals that were checked on these releases only.
TESTED_QCFRACTAL = ("0.71",)
