#!/usr/bin/env bash
# One CI environment: a fresh virtual environment for the given interpreter, the project
# installed from this source tree as the README says (`pip install ".[test]"`), an import check
# from outside the source tree, and the README's test command (`pytest`). Called by .ci/run.
#
#   .ci/env.sh NAME PYTHON [--constraints FILE] [--ruff] [--sanitize]
#
# --constraints FILE  pins the resolution (the oldest supported releases; PIP_CONSTRAINT, so every
#                     pip call in this environment obeys it).
# --ruff              runs `ruff check .` in this environment.
# --sanitize          runs scripts/sanitize.sh with this environment's Python.
# LUTGEMM_CUDA (AUTO, ON, OFF) is passed to the build unchanged.
#
# Runs every step even after a failure (the test results of a broken environment are still
# worth seeing) and exits non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."

name="$1"
python="$2"
shift 2
constraints="" ruff=0 sanitize=0
while (($#)); do
  case "$1" in
    --constraints) constraints="$(realpath "$2")"; shift 2 ;;
    --ruff) ruff=1; shift ;;
    --sanitize) sanitize=1; shift ;;
    *) echo "env.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

failed=()
step() {  # step LABEL COMMAND...: runs COMMAND, records LABEL if it exits non-zero
  local label="$1" start rc
  shift
  echo "=== [$name] $label"
  start=$(date +%s)
  "$@"
  rc=$?
  echo "=== [$name] $label: exit $rc, $(( $(date +%s) - start )) s"
  ((rc == 0)) || failed+=("$label (exit $rc)")
  return "$rc"
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
venv="$tmp/venv"
if ! step "create venv" "$python" -m venv "$venv"; then
  echo "=== [$name] FAILED: ${failed[*]}" >&2
  exit 1
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
if [[ -n "$constraints" ]]; then
  export PIP_CONSTRAINT="$constraints"
fi
step "upgrade pip" python -m pip install --quiet --upgrade pip
if step "pip install .[test]" pip install ".[test]"; then  # README quick start, 2 (part 1)
  pip list 2>/dev/null | grep -iE '^(jax|jaxlib|flax|numpy|optax|orbax-checkpoint) '
  # From / so that the installed package is imported, not the source tree.
  step "import" bash -c 'cd / && python -c "import lutgemm_jax, json, sys
print(sys.version.split()[0], json.dumps(lutgemm_jax.build_info()))"'
  if ((ruff)); then step "ruff" ruff check .; fi
  step "pytest" pytest  # README quick start, 2 (part 2); any exit status but 0 fails
  # Sanitizer job: the CPU extension rebuilt with AddressSanitizer + UndefinedBehaviorSanitizer
  # in its own build/install directories, then the kernel, FFI-attack, property, numerics and
  # concurrency tests against it with libasan preloaded; any sanitizer report fails CI (see
  # scripts/sanitize.sh for the tests it runs and why).
  if ((sanitize)); then step "sanitizer" env PYTHON=python scripts/sanitize.sh; fi
fi

if ((${#failed[@]})); then
  echo "=== [$name] FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "=== [$name] passed"
