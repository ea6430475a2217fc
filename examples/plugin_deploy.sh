#!/usr/bin/env bash
# End to end: a QCFractal server with the qcmb-fractal plugin on an existing PostgreSQL, one compute
# manager, one many-body record submitted from QCPortal. Needs: pip install 'qcmb-fractal[server,xtb]'
# and a PostgreSQL login role allowed to create databases (PGUSER/PGPASSWORD; scripts/postgres.sh
# creates the default one, qcmb_test, on 127.0.0.1:5432).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${WORK:-$(mktemp -d)}
PORT=${PORT:-7777}
PGUSER=${PGUSER:-qcmb_test}
PGPASSWORD=${PGPASSWORD:-qcmb_test}
cd "$WORK"

cat > server.yaml <<YAML
base_folder: $WORK/server
service_frequency: 5            # how often services (many-body records) advance; seconds
enable_security: false          # turn on, and add users, for anything but a private test server
database:
  host: 127.0.0.1
  port: 5432
  username: $PGUSER
  password: $PGPASSWORD
  database_name: qcmb_fractal_example
  own: false                    # an existing PostgreSQL server, not one QCFractal starts itself
api:
  host: 127.0.0.1
  port: $PORT
  secret_key: $(python -c 'import secrets; print(secrets.token_urlsafe(32))')
  jwt_secret_key: $(python -c 'import secrets; print(secrets.token_urlsafe(32))')
YAML

cat > manager.yaml <<YAML
base_folder: $WORK/manager
cluster: example_cluster
update_frequency: 5
server:
  fractal_uri: http://127.0.0.1:$PORT
  verify: false
executors:
  local:
    type: local
    max_workers: 2
    cores_per_worker: 1
    memory_per_worker: 2
    compute_tags: ["*"]
    scratch_directory: $WORK/scratch
YAML
mkdir -p server manager scratch

qcmb-fractal-server init-db --config server.yaml          # QCFractal tables + the plugin's (idempotent)
qcmb-fractal-server start --config server.yaml > server.log 2>&1 &
SERVER=$!
qcfractal-compute-manager --config manager.yaml > manager.log 2>&1 &
MANAGER=$!
trap 'kill $MANAGER; kill $SERVER; wait' EXIT

python "$HERE/plugin_submit.py" "http://127.0.0.1:$PORT"
