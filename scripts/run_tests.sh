#!/usr/bin/env bash
# Set up the environment (with test tools) and run the test suite.
# Usage: bash scripts/run_tests.sh [pytest args...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh" requirements-dev.txt
VENV="${RICE_VENV:-$ROOT/.venv}"
cd "$ROOT"
set +e
"$VENV/bin/python" -m pytest "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test: that is a failure, not a pass.
if [ "$rc" -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi
exit "$rc"
