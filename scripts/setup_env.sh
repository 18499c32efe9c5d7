#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the
# pinned requirements. Re-installs only when a requirements file changed.
# Usage: source scripts/setup_env.sh [requirements-file]   (default: requirements.txt)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQ="${1:-requirements.txt}"
VENV="${RICE_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
STAMP="$VENV/.installed-$(basename "$REQ")"
HASH="$(cat "$ROOT/requirements.txt" "$ROOT/$REQ" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ]; then
  echo "[setup] installing $REQ (torch is large: the first install takes a few minutes)"
  (cd "$ROOT" && "$VENV/bin/python" -m pip install -q -r "$REQ")
  echo "$HASH" > "$STAMP"
fi
