# Sourced by the run_hh_*.sh scripts (ROOT, OUT and CONFIG set by them):
#   record NAME COMMAND...  runs the command in a fresh workdir ROOT/NAME and appends its
#                           summary.json, with the command, date and machine, to OUT;
# and trains the HH tiny SFT and reward models in ROOT when they are missing.
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
