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

record() {  # record NAME COMMAND...: runs the command in a fresh workdir, appends its summary
  local name=$1
  shift
  rm -rf "${ROOT:?}/$name"
  "$@"
  python - "$name" "$ROOT/$name/summary.json" "$*" >> "$OUT" <<'EOF'
import datetime, json, os, platform, sys

name, path, command = sys.argv[1:]
summary = json.load(open(path))
head = {
    "run": name,
    "command": command,
    "date": datetime.date.today().isoformat(),
    "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
}
print(json.dumps({**head, **summary}))
EOF
}

if [ ! -f "$ROOT/hh_sft/model/config.json" ]; then
  python -m experiments.sft --config=$CONFIG:sft --workdir="$ROOT/hh_sft"
fi
if [ ! -f "$ROOT/hh_rm/summary.json" ]; then
  python -m experiments.reward --config=$CONFIG:reward --workdir="$ROOT/hh_rm" \
    --config.model.sft_dir="$ROOT/hh_sft/model"
fi
MODELS=(--config.model.sft_dir="$ROOT/hh_sft/model" --config.model.reward_dir="$ROOT/hh_rm/model")
record hh_ppo python -m experiments.ppo --config=$CONFIG:ppo --workdir="$ROOT/hh_ppo" "${MODELS[@]}"
record hh_ppo_ptx python -m experiments.ppo --config=$CONFIG:ppo --workdir="$ROOT/hh_ppo_ptx" \
  "${MODELS[@]}" --config.ppo.ptx_coef=1.0
record hh_ppo_ptx_0.1 python -m experiments.ppo --config=$CONFIG:ppo \
  --workdir="$ROOT/hh_ppo_ptx_0.1" "${MODELS[@]}" --config.ppo.ptx_coef=0.1
record hh_ppo_value_head python -m experiments.ppo --config=$CONFIG:ppo \
  --workdir="$ROOT/hh_ppo_value_head" "${MODELS[@]}" --config.ppo.value_model=policy_head
python experiments/results/ppo_table.py "$OUT"
