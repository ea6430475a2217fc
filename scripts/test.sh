#!/usr/bin/env bash
# Install what the tests need, start PostgreSQL, run the whole suite. CI calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nwchem >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nwchem >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
scripts/postgres.sh
python3 -m ruff check .
if [ $# -eq 0 ]; then
  # The documentation site builds without a warning (API reference included); the output is thrown away.
  site=$(mktemp -d)
  NO_MKDOCS_2_WARNING=1 python3 -m mkdocs build --strict --quiet --site-dir "$site"
  rm -rf "$site"
  # The wheel ships no tests and works on its own in a clean virtual environment.
  scripts/check_wheel.sh
fi
# Subprocesses (workers, ranks, servers, managers' tasks) write coverage data here, not in their own cwd.
export COVERAGE_FILE="$PWD/.coverage"
python3 -m pytest --cov=qcmb_fractal --cov-report=term:skip-covered "$@"
# On a full run, the plan/drive/execute core must stay covered (workers and MPI ranks included).
if [ $# -eq 0 ]; then
  python3 -m coverage report --include='qcmb_fractal/plan/*,qcmb_fractal/drive/*,qcmb_fractal/execute/*' \
    --fail-under=95
fi
