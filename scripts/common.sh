# Helpers sourced by scripts/train.sh and scripts/eval.sh; not run on its own.
# PYTHON: the interpreter every script uses. Default: the project's virtual environment
# ($RICE_VENV, else .venv in the repository, as made by scripts/setup_env.sh), else python3.
rice_fail() { echo "error: $*" >&2; exit 2; }
rice_abs() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
rice_int() {  # name value minimum
  case "$2" in ''|*[!0-9]*) rice_fail "$1 must be a whole number, got '$2'" ;; esac
  [ "$2" -ge "$3" ] || rice_fail "$1 must be >= $3, got $2"
}
rice_check_dataset_row() {  # dataset row
  case "$1" in lpr4m|movingfashion) ;; *) rice_fail "DATASET must be lpr4m or movingfashion, got '$1'" ;; esac
  case "$2" in icl|icl_pmd|icl_pmd_pfr) ;; *) rice_fail "ROW must be icl, icl_pmd or icl_pmd_pfr, got '$2'" ;; esac
}
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  _rice_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  if [ -x "${RICE_VENV:-$_rice_root/.venv}/bin/python" ]; then PYTHON="${RICE_VENV:-$_rice_root/.venv}/bin/python"; fi
fi
