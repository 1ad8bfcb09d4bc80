#!/usr/bin/env bash
# Makes experiments/results/ppo_cpu.jsonl: PPO, PPO-ptx (gamma = 1 and 0.1) and PPO with a value
# head on the policy, all from the HH tiny SFT and reward models (trained first if ROOT does not
# hold them yet).
# One JSON line per run: the run's summary.json plus the command, date and machine.
#
#   bash experiments/results/run_hh_ppo.sh [ROOT=/tmp/runs] [OUT=experiments/results/ppo_cpu.jsonl]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${1:-/tmp/runs}
OUT=${2:-experiments/results/ppo_cpu.jsonl}
CONFIG=experiments/configs/hh_tiny.py
: > "$OUT"

source experiments/results/hh_runs.sh
MODELS=(--config.model.sft_dir="$ROOT/hh_sft/model" --config.model.reward_dir="$ROOT/hh_rm/model")
record hh_ppo python -m experiments.ppo --config=$CONFIG:ppo --workdir="$ROOT/hh_ppo" "${MODELS[@]}"
record hh_ppo_ptx python -m experiments.ppo --config=$CONFIG:ppo --workdir="$ROOT/hh_ppo_ptx" \
  "${MODELS[@]}" --config.ppo.ptx_coef=1.0
record hh_ppo_ptx_0.1 python -m experiments.ppo --config=$CONFIG:ppo \
  --workdir="$ROOT/hh_ppo_ptx_0.1" "${MODELS[@]}" --config.ppo.ptx_coef=0.1
record hh_ppo_value_head python -m experiments.ppo --config=$CONFIG:ppo \
  --workdir="$ROOT/hh_ppo_value_head" "${MODELS[@]}" --config.ppo.value_model=policy_head
python experiments/results/ppo_table.py "$OUT"
