#!/usr/bin/env bash
# The README's operator path on one machine: a QCFractal server with the qcmb-fractal plugin on an existing
# PostgreSQL, security on (users and roles), a compute manager with its own credentials, and one many-body
# record submitted from QCPortal by a user with the submit role.
# Needs: pip install 'qcmb-fractal[server,xtb]' and a PostgreSQL login role allowed to create databases
# (PGUSER/PGPASSWORD; scripts/postgres.sh creates the default one, qcmb_test, on 127.0.0.1:5432).
# WORK (a new directory), PORT and DB_NAME (a database that does not exist yet) may be set from outside.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${WORK:-$(mktemp -d)}
PORT=${PORT:-7777}
PGUSER=${PGUSER:-qcmb_test}
PGPASSWORD=${PGPASSWORD:-qcmb_test}
DB_NAME=${DB_NAME:-qcmb_fractal_example}
cd "$WORK"
# token_urlsafe may start with "-": the options below take it as --password=VALUE so argparse reads it as a value.
password() { python3 -c 'import secrets; print(secrets.token_urlsafe(16))'; }
ADMIN_PASSWORD=$(password) ALICE_PASSWORD=$(password) NODE_PASSWORD=$(password)

# 1. Configure. init-config writes QCFractal's defaults (enable_security: true) and the plugin's section;
#    then point it at the existing PostgreSQL, as an operator edits the file.
qcmb-fractal-server init-config --config server.yaml
python3 - server.yaml <<PY
import sys, yaml
path = sys.argv[1]
config = yaml.safe_load(open(path))
config["database"].update(
    host="127.0.0.1", port=5432, username="$PGUSER", password="$PGPASSWORD", database_name="$DB_NAME", own=False
)
config["api"].update(host="127.0.0.1", port=$PORT)
config["service_frequency"] = 2                         # seconds between steps of the services
config["qcmb_fractal"]["max_children_per_record"] = 2000  # fragment calculations one record may need
yaml.safe_dump(config, open(path, "w"), sort_keys=False)
PY

# 2. Create the database (QCFractal's tables and the plugin's), and the users: one per role.
qcmb-fractal-server init-db --config server.yaml
qcmb-fractal-server user add admin --role admin --password="$ADMIN_PASSWORD" --config server.yaml
qcmb-fractal-server user add alice --role submit --password="$ALICE_PASSWORD" --config server.yaml
qcmb-fractal-server user add node1 --role compute --password="$NODE_PASSWORD" --config server.yaml
qcmb-fractal-server check --config server.yaml

# 3. Start the server, and wait until it answers.
qcmb-fractal-server start --config server.yaml > server.log 2>&1 &
SERVER=$!
trap 'kill ${MANAGER:-} $SERVER 2>/dev/null; wait' EXIT
python3 - "http://127.0.0.1:$PORT/api/v1/information" <<'PY'
import sys, time, urllib.error, urllib.request
for _ in range(300):
    try:
        urllib.request.urlopen(sys.argv[1], timeout=5)
        break
    except urllib.error.HTTPError:  # answering, even if it wants a login
        break
    except OSError:
        time.sleep(1)
else:
    sys.exit("the server did not come up; see server.log")
PY

# 4. A compute manager on this machine, logging in as node1. It runs plain singlepoints: no plugin needed.
cat > manager.yaml <<YAML
cluster: example_cluster            # how this manager appears in the server's list of managers
loglevel: INFO
update_frequency: 5                 # seconds between asking the server for work
base_folder: $WORK/manager
server:
  fractal_uri: http://127.0.0.1:$PORT
  username: node1                   # a user with the compute role
  password: $NODE_PASSWORD
  verify: false                     # keep the default (true) for https with a real certificate
executors:
  local:
    type: local
    max_workers: 2                  # calculations at once
    cores_per_worker: 1
    memory_per_worker: 2            # GiB
    compute_tags: ["*"]             # take records of any compute tag
    scratch_directory: $WORK/manager/scratch
YAML
mkdir -p manager/scratch
qcfractal-compute-manager --config manager.yaml > manager.log 2>&1 &
MANAGER=$!

# 5. Submit as alice, with QCPortal's own environment variables, and wait for the result.
QCPORTAL_ADDRESS="http://127.0.0.1:$PORT" QCPORTAL_USERNAME=alice QCPORTAL_PASSWORD="$ALICE_PASSWORD" \
  python3 "$HERE/plugin_submit.py"
