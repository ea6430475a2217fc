#!/usr/bin/env bash
# Build the wheel, check what it ships, install it into a new virtual environment (no site packages,
# no source tree on the path) and run the CLI from there: plan, a small real NWChem run, show.
# uv builds and installs (its cache keeps the dependencies' wheels): seconds where pip takes ~40 s.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
start=$SECONDS

export UV_NATIVE_TLS=1  # the system's CA store, as pip uses here (also behind a TLS-inspecting proxy)
uv build -q --wheel --out-dir "$WORK/dist" .
rm -rf build qcmb_fractal.egg-info  # setuptools' in-tree leftovers
wheel=$(ls "$WORK"/dist/qcmb_fractal-*.whl)
python3 - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
bad = [n for n in names if n.startswith("tests/") or n.rsplit("/", 1)[-1].startswith(("test_", "conftest"))]
# fault-injection shims and fakes exist for tests only: they may ship inside qcmb_fractal/testing, nowhere else
bad += [n for n in names if "fault" in n.lower() and not n.startswith("qcmb_fractal/testing/")]
if bad:
    sys.exit(f"the wheel ships test files: {bad}")
if not any(n == "qcmb_fractal/cli.py" for n in names):
    sys.exit("the wheel lacks qcmb_fractal/cli.py")
print(f"wheel {sys.argv[1].rsplit('/', 1)[-1]}: {len(names)} files, no tests")
PY

uv venv -q --python "$(python3 -c 'import sys; print(sys.executable)')" "$WORK/venv"
uv pip install -q --compile-bytecode --python "$WORK/venv/bin/python" "$wheel"
cd "$WORK"  # nothing from the source tree can be imported from here
env -u PYTHONPATH "$WORK/venv/bin/qcmb-fractal" plan "$REPO/examples/water6-xtb-mbe3.json" > plan.txt
grep -q "41" plan.txt || { cat plan.txt; exit 1; }
env -u PYTHONPATH "$WORK/venv/bin/qcmb-fractal" run "$REPO/examples/water6.xyz" --program nwchem --method hf \
  --basis sto-3g --max-nbody 1 --workers 2 --no-progress -o w6.json > run.txt
env -u PYTHONPATH "$WORK/venv/bin/qcmb-fractal" show w6.json | grep -q "^nocp *1 " || { cat run.txt; exit 1; }
where=$(env -u PYTHONPATH "$WORK/venv/bin/python" -c 'import qcmb_fractal; print(qcmb_fractal.__file__)')
case $where in "$WORK/venv/"*) ;; *) echo "qcmb_fractal imported from $where, not the wheel"; exit 1 ;; esac
echo "wheel installed into a clean venv and ran plan/run/show in $((SECONDS - start)) s"
