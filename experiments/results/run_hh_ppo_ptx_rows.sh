#!/usr/bin/env bash
# Makes experiments/results/ppo_ptx_packed_rows_hh.jsonl: PPO-ptx from the HH tiny SFT and reward
# models (trained first if ROOT does not hold them yet) with its pretraining documents one padded
# row each (16 rows per iteration) and packed up to 4 to a row (12 rows, ~17 documents), in two
# alternating pairs, so that each layout's wall time is measured twice on the same host.
#
#   bash experiments/results/run_hh_ppo_ptx_rows.sh [ROOT=/tmp/runs] [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${1:-/tmp/runs}
OUT=${2:-experiments/results/ppo_ptx_packed_rows_hh.jsonl}
CONFIG=experiments/configs/hh_tiny.py
: > "$OUT"

source experiments/results/hh_runs.sh
PTX=(--config=$CONFIG:ppo --config.model.sft_dir="$ROOT/hh_sft/model"
  --config.model.reward_dir="$ROOT/hh_rm/model" --config.ppo.ptx_coef=1.0)
PACKED=(--config.ppo.ptx_documents_per_row=4 --config.ppo.ptx_batch_size=12)
for pair in 1 2; do
  record "hh_ppo_ptx_rows_$pair" python -m experiments.ppo "${PTX[@]}" \
    --workdir="$ROOT/hh_ppo_ptx_rows_$pair"
  record "hh_ppo_ptx_packed_$pair" python -m experiments.ppo "${PTX[@]}" "${PACKED[@]}" \
    --workdir="$ROOT/hh_ppo_ptx_packed_$pair"
done
