"""Prints experiments/results/ppo_cpu.jsonl (or the given file) as the README's markdown table.

python experiments/results/ppo_table.py [experiments/results/ppo_cpu.jsonl]
"""

import json
import sys

COLUMNS = (
    (
        "held-out RM score: SFT -> PPO",
        lambda r: f"{r['sft_eval_score']:.2f} -> {r['eval_score']:.2f}",
    ),
    ("held-out KL (nats/response)", lambda r: f"{r['eval_kl']:.2f}"),
    (
        "held-out pretraining NLL: SFT -> PPO",
        lambda r: f"{r['sft_eval_pretrain_nll']:.3f} -> {r['eval_pretrain_nll']:.3f}",
    ),
    ("response length", lambda r: f"{r['eval_response_length']:.1f}"),
    ("duplicate rate", lambda r: f"{r['eval_duplicate_rate']:.2f}"),
)


def main(path: str) -> None:
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    print("| run | value model | ptx gamma | " + " | ".join(c for c, _ in COLUMNS) + " |")
    print("| --- " * (3 + len(COLUMNS)) + "|")
    for r in rows:
        cells = [r["run"], r["value_model"], f"{r['ptx_coef']:g}"] + [f(r) for _, f in COLUMNS]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "experiments/results/ppo_cpu.jsonl")
