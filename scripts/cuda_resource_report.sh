#!/usr/bin/env bash
# Prints the CUDA kernels' resource usage per instantiation and architecture (ptxas -v:
# registers, shared memory, stack, spills) and checks the machine code (cuobjdump -sass) for
# 128-bit global loads (LDG.E.128) and local-memory traffic (LDL/STL) in the LUT kernels.
# Usage: scripts/cuda_resource_report.sh [archs...]   (default: 80 90). Needs nvcc; no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
archs=("${@:-80 90}")
read -r -a archs <<<"${archs[*]}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
gencode=()
for a in "${archs[@]}"; do gencode+=(-gencode "arch=compute_${a},code=sm_${a}"); done
# cuobjdump: from the CUDA toolkit, or `pip install --target DIR nvidia-cuda-cuobjdump`
# (set CUOBJDUMP=DIR/nvidia/cu13/bin/cuobjdump).
CUOBJDUMP=${CUOBJDUMP:-$(command -v cuobjdump || echo /tmp/cutools/nvidia/cu13/bin/cuobjdump)}
export PATH="$PATH:$(dirname "$CUOBJDUMP")"  # cuobjdump -sass runs nvdisasm (pip: nvidia-cuda-nvdisasm)
nvcc --version | tail -1
nvcc -std=c++17 -O3 -Icuda -Iinclude "${gencode[@]}" -Xptxas -v -c cuda/lut_gemm_cuda.cu \
  -o "$tmp/k.o" 2>"$tmp/ptxas.txt"
echo
echo "== ptxas resource usage (kernel, arch: registers, shared memory, stack, spills) =="
awk '
  /Compiling entry function/ { match($0, /_Z[A-Za-z0-9_]+/); fn = substr($0, RSTART, RLENGTH);
                               match($0, /sm_[0-9]+/); arch = substr($0, RSTART, RLENGTH) }
  /bytes stack frame/ { stack = $1; spill = $5 + $9 }
  /Used [0-9]+ registers/ { match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15);
                            smem = 0; if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH - 11);
                            printf "%-8s %-60s regs %3d  smem %6d B  stack %3d B  spill %d B\n", arch, fn, regs, smem, stack, spill }
' "$tmp/ptxas.txt" | sed -e 's/_ZN7lutgemm4cuda13LutGemmKernelILi\([0-9]\)ELi\([0-9]\)ELb\([01]\)EEEvNS0_11LutGemmArgsE/LutGemmKernel<QMAX=\1, MT=\2, G16=\3>/' \
  -e 's/_ZN7lutgemm4cuda19LutGemmReduceKernelEPKfPvlii/LutGemmReduceKernel/' \
  -e 's/_ZN7lutgemm4cuda13DequantKernelENS0_11DequantArgsE/DequantKernel/' | sort
spills=$(grep -c "[1-9][0-9]* bytes spill" "$tmp/ptxas.txt" || true)
echo "instantiations with spills: $spills"
echo
echo "== SASS: 128-bit global loads (LDG.E.128) and local memory (LDL/STL) per LUT kernel =="
for a in "${archs[@]}"; do
  "$CUOBJDUMP" -sass -arch "sm_${a}" "$tmp/k.o" >"$tmp/sass_${a}.txt"
  awk -v arch="sm_${a}" '
    /Function :/ { if (fn != "") printf "%-6s %-34s LDG.128 %3d  LDG(other) %3d  LDS.128 %3d  LDL/STL %d\n", arch, fn, l128, lother, s128, local;
                   fn = $3; l128 = 0; lother = 0; s128 = 0; local = 0 }
    /LDG\.E\.128/ { l128++ } /LDG/ && !/LDG\.E\.128/ { lother++ } /LDS\.128/ { s128++ } /LDL|STL/ { local++ }
    END { printf "%-6s %-34s LDG.128 %3d  LDG(other) %3d  LDS.128 %3d  LDL/STL %d\n", arch, fn, l128, lother, s128, local }
  ' "$tmp/sass_${a}.txt" | sed -e 's/_ZN7lutgemm4cuda13LutGemmKernelILi\([0-9]\)ELi\([0-9]\)ELb\([01]\)EEEvNS0_11LutGemmArgsE/LutGemmKernel<\1,\2,\3>/' \
    -e 's/_ZN7lutgemm4cuda19LutGemmReduceKernelEPKfPvlii/LutGemmReduceKernel/' \
    -e 's/_ZN7lutgemm4cuda13DequantKernelENS0_11DequantArgsE/DequantKernel/' | sort
done
