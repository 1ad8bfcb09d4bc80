#!/usr/bin/env bash
# Where XLA:GPU's compile time goes: the benchmark's programs compiled under XLA flag variants,
# one JSON-lines file per variant in OUT_DIR (read them with
# `python -m experiments.benchmark --from_jsonl=FILE`).
#
#   autotune_0      --xla_gpu_autotune_level=0: no autotuning of GEMM (and fusion) configs
#   default         XLA's defaults (autotuning on)
#   no_triton_gemm  --xla_gpu_enable_triton_gemm=false: cuBLAS for every matmul, so the autotuner
#                   has no Triton GEMM configs to compile and time
#
# The first variant runs every workload with the PyTorch baseline; the others only the two
# programs that compiled slowest (SFT step, PPO update) without it, to fit a short device lease.
# Each variant has its own time limit (seconds; the second argument, 200 by default).
#
#   bash experiments/benchmark_xla_flags.sh OUT_DIR [LIMIT_S]
set -uo pipefail
out=${1:?usage: bash experiments/benchmark_xla_flags.sh OUT_DIR [LIMIT_S]}
limit=${2:-200}
mkdir -p "$out"

run_variant() {  # name, XLA flags, benchmark flags...
  local name=$1 flags=$2
  shift 2
  echo "== $name: XLA_FLAGS='$flags' $*" >&2
  XLA_FLAGS="$flags" timeout "$limit" python3 -m experiments.benchmark --notable "$@" \
    > "$out/benchmark_gpu_xla_$name.jsonl" 2> "$out/benchmark_gpu_xla_$name.err"
  echo "   exit $?" >&2
  python3 -m experiments.benchmark --from_jsonl="$out/benchmark_gpu_xla_$name.jsonl" >&2 || true
}

run_variant autotune_0 "--xla_gpu_autotune_level=0"
run_variant default "" --workloads=a,e --notorch
run_variant no_triton_gemm "--xla_gpu_enable_triton_gemm=false" --workloads=a,e --notorch
