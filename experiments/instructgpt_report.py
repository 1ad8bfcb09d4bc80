"""Tables of finished InstructGPT runs (`rlhf_jax.recipes.instructgpt.report`).

  python -m experiments.instructgpt_report W/metrics.json          # a run's summary table
  python -m experiments.instructgpt_report --compare=OUT.png A=W1/metrics.json B=W2/metrics.json
  python -m experiments.instructgpt_report --same_as=REF/metrics.json W/metrics.json

`--compare` prints the runs' win rates side by side and plots them to OUT.png; `--same_as` lists
every figure where the run differs from the reference run, wall times, compile times and
throughputs aside, and exits with status 1 if there is one.
"""

from __future__ import annotations

import argparse
import json
import sys

from rlhf_jax.recipes.instructgpt import report


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", nargs="*", default=["metrics.json"])
    parser.add_argument("--compare", metavar="OUT.png", help="compare LABEL=metrics.json runs")
    parser.add_argument("--same_as", metavar="REF.json", help="the run's differences from REF")
    args = parser.parse_args(argv)
    if args.same_as:
        differences = report.differences(_load(args.metrics[0]), _load(args.same_as))
        print("\n".join(differences) or f"{args.metrics[0]} equals {args.same_as}, timings aside.")
        if differences:
            sys.exit(1)
        return
    if not args.compare:
        print(report.summary_table(_load(args.metrics[0])))
        return
    runs = {}
    for item in args.metrics:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            parser.error(f"--compare takes LABEL=path/to/metrics.json arguments, got {item!r}")
        runs[label] = _load(path)
    if len(runs) < 2:
        parser.error("--compare needs at least two runs")
    print(report.compare_table(runs))
    report.plot_compare(runs, args.compare)


if __name__ == "__main__":
    main()
