#!/usr/bin/env bash
# Sanitizer run: builds the CPU extension with AddressSanitizer + UndefinedBehaviorSanitizer
# (CMake option LUTGEMM_SANITIZE=ON) into a separate install directory, then runs the kernel
# tests against that build with libasan preloaded into Python. Never touches build/dev, build/<wheel
# tag> or the installed package. Exit status 0 means: the tests passed and there were zero
# sanitizer reports.
#
#   scripts/sanitize.sh                 # build (incremental in build/asan) + the default tests
#   scripts/sanitize.sh -x --durations=9  # the default tests with extra pytest options
#   scripts/sanitize.sh tests/test_x.py # build + the given test paths (and options) instead
#
# Environment: LUTGEMM_ASAN_TARGET (install dir, default /tmp/lutgemm-asan),
# LUTGEMM_ASAN_BUILD (CMake build dir, default build/asan), PYTHON (default python3).
#
# Default tests (together they reach every kernel code path: the three kernel paths (exact LUT,
# fast LUT, dense tiles) x both ISA paths (portable, AVX2), every q 1..8, every group size incl.
# per-column, with/without offset, all activation/alpha dtypes, M = 0..17 rows, the column-tiled
# and row-blocked loops, NaN/Inf inputs, the validation of every malformed FFI call, thread
# counts 1..8 and 8 concurrent Python threads):
#   tests/test_lowering_cpu.py tests/test_ffi_attacks.py tests/test_ffi_attacks_cuda.py
#   tests/test_properties.py (ci profile, native-kernel properties only)
#   tests/test_concurrency.py tests/test_numerics.py
# Deselected: the CUDA emulation and the pure-jnp path (they run no code of the sanitized
# extension), the quantizer property (jnp code; its kernel calls are covered by the others) and
# the subprocess tests of test_lowering_cpu.py that only compare process-level settings.
default_filter="not emulation and not reference and not quantize_pack \
and not one_or_all_cpus and not library_default_mode"
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
python="${PYTHON:-python3}"
target="${LUTGEMM_ASAN_TARGET:-/tmp/lutgemm-asan}"
build_dir="${LUTGEMM_ASAN_BUILD:-build/asan}"
logs="$target/sanitizer-logs"

if ! "$python" -c "import scikit_build_core, nanobind" 2>/dev/null; then
  "$python" -m pip install --quiet "scikit-build-core>=0.10" "nanobind>=2.0"
fi

start=$(date +%s)
"$python" -m pip install --quiet --upgrade --no-build-isolation --no-deps --target "$target" . \
  -Ccmake.define.LUTGEMM_SANITIZE=ON -Ccmake.define.LUTGEMM_CUDA=OFF -Cbuild-dir="$build_dir"
echo "sanitize: ASan+UBSan build took $(( $(date +%s) - start )) s"

so=$(ls "$target"/lutgemm_jax/_lutgemm_cpu*.so)
symbols="$(nm -D "$so")"
for runtime in __asan_report __ubsan_handle; do
  if ! grep -q "$runtime" <<<"$symbols"; then
    echo "sanitize: $so is not instrumented ($runtime* not referenced)" >&2
    exit 1
  fi
done

# An editable install of lutgemm_jax puts an import hook at the front of sys.meta_path that
# would win over PYTHONPATH; this sitecustomize (run after .pth files) drops it so that every
# Python process (subprocesses of the tests too) imports the sanitizer build.
cat > "$target/sitecustomize.py" <<'PY'
import sys

sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__name__.startswith("ScikitBuild")]
PY

rm -rf "$logs"
mkdir -p "$logs"
cxx="${CXX:-g++}"
asan_rt="$("$cxx" -print-file-name=libasan.so)"
ubsan_rt="$("$cxx" -print-file-name=libubsan.so)"
# libstdc++ too: Python is a C program, and without it preloaded ASan cannot find the real
# __cxa_throw when it starts, so the first C++ exception (jaxlib throws some while probing
# plugins) would abort with "CHECK failed ... real___cxa_throw".
stdcxx_rt="$("$cxx" -print-file-name=libstdc++.so.6)"
export LD_PRELOAD="$asan_rt:$stdcxx_rt${LD_PRELOAD:+:$LD_PRELOAD}"
# Python and jaxlib leak by design (interned objects, caches): leak checking is off. Any report
# stops the process (halt_on_error) and is also written to $logs (counted below).
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86:log_path=$logs/asan:print_summary=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=87:log_path=$logs/ubsan"
export PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}"
export HYPOTHESIS_PROFILE=ci
export LUTGEMM_SANITIZER_BUILD=1
echo "sanitize: LD_PRELOAD=$LD_PRELOAD (ubsan runtime: $ubsan_rt)"

# Run from outside the repository so that neither the working tree's lutgemm_jax (no compiled
# extension) nor the editable install is imported.
cd "$target"
"$python" -c "
import lutgemm_jax, lutgemm_jax._lutgemm_cpu as m, sys
assert m.__file__.startswith('$target'), m.__file__
assert lutgemm_jax.build_info()['cpu'], lutgemm_jax.build_info()
print('sanitize: testing', m.__file__, 'isa', m.selected_isa())
"
args=()
paths=0
for arg in "$@"; do  # test paths are relative to the repository root
  if [[ "$arg" != -* && -e "$root/${arg%%::*}" ]]; then
    args+=("$root/$arg")
    paths=$((paths + 1))
  else
    args+=("$arg")
  fi
done
if [ "$paths" -eq 0 ]; then  # no test paths given (options only, or nothing): the default set
  args+=("$root/tests/test_lowering_cpu.py" "$root/tests/test_ffi_attacks.py"
    "$root/tests/test_ffi_attacks_cuda.py" "$root/tests/test_properties.py"
    "$root/tests/test_concurrency.py" "$root/tests/test_numerics.py" -k "$default_filter")
fi
set -- "${args[@]}"
status=0
start=$(date +%s)
"$python" -m pytest -q -p no:cacheprovider --rootdir "$root" -c "$root/pyproject.toml" "$@" \
  || status=$?
echo "sanitize: tests took $(( $(date +%s) - start )) s (pytest exit status $status)"

reports=$(cat "$logs"/* 2>/dev/null | grep -c -E "ERROR: AddressSanitizer|runtime error:" || true)
echo "sanitize: sanitizer reports: $reports"
if [ "$reports" -ne 0 ]; then
  cat "$logs"/* >&2
  exit 1
fi
exit "$status"
