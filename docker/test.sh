#!/usr/bin/env bash
# Build the images, bring up compose.yaml (PostgreSQL, server, one compute manager), submit a many-body
# record as the admin, check it against a local run, tear everything down. Not part of CI (minutes).
#
# Uses podman (no daemon; where no image registry can be reached, the Debian base is made with
# mmdebstrap). Networking is the host's, so PostgreSQL and the server listen on ports other than the
# usual ones: QCMB_TEST_PG_PORT (55432) and QCMB_TEST_API_PORT (57777). Set QCMB_TEST_KEEP=1 to leave
# the stack running, QCMB_FRESH_BASE=1 to rebuild the base image.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PG_PORT=${QCMB_TEST_PG_PORT:-55432}
API_PORT=${QCMB_TEST_API_PORT:-57777}
PROJECT=qcmb-fractal-test
BASE=localhost/debian:bookworm-slim
TAG=test
T0=$SECONDS
stamp() { echo "[docker/test.sh $((SECONDS - T0)) s] $*"; }

need=()
for tool in podman:podman runc:runc mmdebstrap:mmdebstrap python3:python3-venv; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  stamp "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

WORK=$(mktemp -d /tmp/qcmb-docker-test.XXXXXX)
# crun cannot set rlimits or use hybrid cgroups in some sandboxes; runc with cgroupfs works everywhere.
cat > "$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
EOF
export CONTAINERS_CONF=$WORK/containers.conf
# Debian's podman-compose (1.0.3) attaches a network even to network_mode: host services; PyPI's does not.
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q --disable-pip-version-check 'podman-compose>=1.2'

compose() {
  "$WORK/venv/bin/podman-compose" --no-ansi -p "$PROJECT" -f "$REPO/docker/compose.yaml" -f "$WORK/compose.host.yaml" "$@"
}
cleanup() {
  local rc=$?
  if [ "${QCMB_TEST_KEEP:-0}" = 1 ]; then
    stamp "stack left running (QCMB_TEST_KEEP=1); stop it with: CONTAINERS_CONF=$CONTAINERS_CONF podman-compose -p $PROJECT -f $REPO/docker/compose.yaml -f $WORK/compose.host.yaml down -v"
    return
  fi
  if [ -f "$WORK/compose.host.yaml" ]; then
    [ $rc -eq 0 ] || compose logs > "$WORK/stack.log" 2>&1 || true
    [ $rc -eq 0 ] || tail -n 60 "$WORK/stack.log" || true
    compose down -v >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  stamp "torn down (exit $rc)"
}
trap cleanup EXIT

if [ "${QCMB_FRESH_BASE:-0}" = 1 ] || ! podman image exists "$BASE"; then
  stamp "making the Debian base image with mmdebstrap"
  mmdebstrap --quiet --variant=minbase bookworm "$WORK/rootfs.tar"
  podman import --quiet "$WORK/rootfs.tar" "$BASE" >/dev/null
  rm -f "$WORK/rootfs.tar"
fi

build_args=(--isolation=chroot --build-arg "BASE=$BASE")
# A machine behind a TLS-inspecting proxy trusts its CA through the system bundle; pip in the build needs it too.
if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
  build_args+=(--secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt)
fi
declare -A build_seconds
for image in postgres server compute; do
  stamp "building qcmb-fractal-$image"
  start=$SECONDS
  podman build --quiet "${build_args[@]}" -f "$REPO/docker/$image.Dockerfile" -t "localhost/qcmb-fractal-$image:$TAG" \
    "$REPO" >/dev/null
  build_seconds[$image]=$((SECONDS - start))
done

mkdir -m 700 "$WORK/secrets"
for name in db_password admin_password compute_password; do
  python3 -c 'import secrets; print(secrets.token_urlsafe(24))' > "$WORK/secrets/$name"
  chmod 644 "$WORK/secrets/$name"  # read by the containers' own users
done
chmod 755 "$WORK/secrets"

# Host networking: the services find each other on 127.0.0.1 at the test ports instead of by name.
cat > "$WORK/compose.host.yaml" <<EOF
services:
  postgres:
    image: localhost/qcmb-fractal-postgres:$TAG
    network_mode: host
    environment:
      PGPORT: "$PG_PORT"
  server:
    image: localhost/qcmb-fractal-server:$TAG
    network_mode: host
    environment:
      QCMB_DB_HOST: 127.0.0.1
      QCMB_DB_PORT: "$PG_PORT"
      QCMB_API_PORT: "$API_PORT"
  compute:
    image: localhost/qcmb-fractal-compute:$TAG
    network_mode: host
    environment:
      QCMB_SERVER_URI: http://127.0.0.1:$API_PORT
      QCMB_CORES_PER_WORKER: "1"
EOF
export QCMB_SECRETS=$WORK/secrets

answers() {  # any HTTP answer counts: with anonymous reads off, the server answers 401
  python3 - "http://127.0.0.1:$API_PORT/api/v1/information" <<'PY' 2>/dev/null
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
except urllib.error.HTTPError:
    pass
PY
}
check() {  # check_service.py in a throwaway container of the compute image, as the admin
  podman run --rm --network host -v "$REPO/docker/check_service.py:/check_service.py:ro" \
    -v "$WORK/secrets/admin_password:/run/secrets/admin_password:ro" --entrypoint python \
    "localhost/qcmb-fractal-compute:$TAG" /check_service.py "http://127.0.0.1:$API_PORT" admin \
    /run/secrets/admin_password "$@"
}
wait_for_server() {
  local start=$SECONDS running
  until answers; do
    running=$(podman ps --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}' | wc -l)
    if [ "$running" -ne 3 ] || [ $((SECONDS - start)) -gt 300 ]; then
      stamp "the stack is not up ($running of 3 containers running, $((SECONDS - start)) s)"
      exit 1
    fi
    sleep 2
  done
}

stamp "starting the stack"
up_start=$SECONDS
compose up -d --no-build >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; exit 1; }
wait_for_server
stamp "server answers after $((SECONDS - up_start)) s"

check_start=$SECONDS
check | tee "$WORK/check.log"
record_seconds=$(awk '/^TIME_TO_RECORD/ {print $2}' "$WORK/check.log")
record_id=$(awk '/^RECORD_ID/ {print $2}' "$WORK/check.log")

stamp "restarting the server: upgrade-db, same users, the record kept"
compose restart server >/dev/null
sleep 5
wait_for_server
check "$record_id"

stamp "an MPI run in the compute image (what the Apptainer image runs on HPC)"
mpi_start=$SECONDS
podman run --rm --network host --entrypoint sh "localhost/qcmb-fractal-compute:$TAG" -c '
  set -e; cd /tmp
  python -c "from qcmb_fractal.testing.molecules import water_cluster_text as w; print(w(3))" > w3.xyz
  mpiexec -n 3 qcmb-fractal run w3.xyz --program nwchem --method hf --basis sto-3g --bsse nocp cp --max-nbody 3 \
    --backend mpi --no-progress' | tee "$WORK/mpi.log"
grep -q "13 calculations (13 computed" "$WORK/mpi.log"
mpi_seconds=$((SECONDS - mpi_start))

echo
echo "== docker/test.sh summary =="
for image in postgres server compute; do
  size=$(podman image inspect --format '{{.Size}}' "localhost/qcmb-fractal-$image:$TAG")
  awk -v n="qcmb-fractal-$image" -v s="$size" -v t="${build_seconds[$image]}" \
    'BEGIN { printf "%-22s %6.0f MB  built in %4d s\n", n, s / 1e6, t }'
done
echo "stack up to server answering: $((check_start - up_start)) s"
echo "submission to finished record (water trimer, NWChem HF/STO-3G, nocp+cp, MBE(3), 13 calculations): ${record_seconds} s"
echo "mpiexec -n 3 qcmb-fractal run --backend mpi in the compute image (a water trimer, HF/STO-3G, nocp+cp, MBE(3); container start included): ${mpi_seconds} s"
echo "whole test: $((SECONDS - T0)) s"
