"""report.md, metrics.json and PNG plots of an `experiments.instructgpt` run.

Every figure comes from the stage summaries and metric files of the run; the acceptance lines of
the main job are checked and printed as they came out, met or not.
"""

from __future__ import annotations

import json
import os

import numpy as np

from rlhf_jax.recipes.instructgpt import presets
from rlhf_jax.training.metrics_writer import read_metrics

NICE = {
    "base_small_zero_shot": "base (zero-shot)",
    "base_small_few_shot": "base (few-shot)",
    "sft_small": "SFT",
    "ppo_small": "PPO",
    "ppo_ptx_small": "PPO-ptx",
    "base_large_zero_shot": "large base (zero-shot)",
    "base_large_few_shot": "large base (few-shot)",
    "sft_large": "large SFT",
}


def _pct(x: dict | None) -> str:
    if not x:
        return "n/a"
    return f"{100 * x['rate']:.1f}% [{100 * x['low']:.1f}, {100 * x['high']:.1f}] (n={x['n']})"


def _plot_win_rates(models: dict, path: str) -> None:
    _plot_win_rate_bars(
        {"": models},
        path,
        "Held-out prompts, gold labeler (95% bootstrap intervals)",
        figsize=(8, 3.5),
    )


def _shared_models(runs: dict[str, dict]) -> list[str]:
    """The models every run ({label: {model: metrics}}) has, SFT aside, in the first one's order."""
    first = next(iter(runs.values()))
    return [n for n in first if n != "sft_small" and all(n in m for m in runs.values())]


def _plot_win_rate_bars(runs: dict[str, dict], path: str, title: str, figsize) -> None:
    """Win rates against SFT (95% intervals) of the models every run has, one bar per run.

    Args:
      runs: {label: {model name: its metrics}}; a single run gets no legend.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = _shared_models(runs)
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=figsize)
    for i, (label, models) in enumerate(runs.items()):
        wins = [models[n]["win_rate_vs_baseline"] for n in names]
        rates = np.array([w["rate"] for w in wins])
        spread = np.stack([rates - [w["low"] for w in wins], [w["high"] for w in wins] - rates])
        x = np.arange(len(names)) + (i - (len(runs) - 1) / 2) * width
        ax.bar(x, 100 * rates, width, yerr=100 * spread, label=label)
    ax.axhline(50, color="gray", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(names)), [NICE.get(n, n) for n in names], rotation=25, ha="right")
    ax.set_ylabel("gold win rate vs small SFT (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    if len(runs) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_ppo_curves(workdir: str, path: str) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (
        ("train/rollout/score", "RM score"),
        ("train/rollout/kl", "KL to SFT (nats/response)"),
        ("train/rollout/response_length", "response length (tokens)"),
        ("train/ptx/nll", "ptx NLL"),
    )
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3))
    curves = {}
    for run in ("ppo", "ppo_ptx"):
        file = os.path.join(workdir, run, "metrics.jsonl")
        if not os.path.exists(file):
            continue
        rows = read_metrics(file)
        for ax, (key, title) in zip(axes, keys, strict=True):
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                x, y = zip(*points, strict=True)
                # Fixed colours: a panel may hold only one of the runs (ptx NLL).
                ax.plot(x, y, label=NICE[f"{run}_small"], color="C0" if run == "ppo" else "C1")
                curves.setdefault(run, {})[key] = {"first": y[0], "last": y[-1]}
            ax.set_title(title)
            ax.set_xlabel("PPO iteration")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return curves


def _compare(a: dict, b: dict) -> str:
    """Whether model a's win rate beats b's, from their 95% intervals."""
    ra, rb = a["win_rate_vs_baseline"], b["win_rate_vs_baseline"]
    if ra["low"] > rb["high"]:
        return "beats"
    if ra["high"] < rb["low"]:
        return "is beaten by"
    return "is not distinguishable at 95% from"


def _stage_time_table(m: dict) -> list[str]:
    """Wall seconds per stage and, in runs that measured it, the part spent in XLA's compiler
    (or loading compiled programs from the persistent cache)."""
    compile_s = m.get("stages_compile_s") or {}

    def cell(value):
        return "n/a" if value is None else f"{value:.1f}"

    if not any(v is not None for v in compile_s.values()):
        lines = ["| stage | seconds |", "| --- | --- |"]
        lines += [f"| {k} | {cell(v)} |" for k, v in m["stages_wall_s"].items()]
        return lines + [f"| total | {m['headline']['total_wall_s']:.1f} |"]
    lines = ["| stage | seconds | of which XLA compiling |", "| --- | --- | --- |"]
    lines += [
        f"| {k} | {cell(v)} | {cell(compile_s.get(k))} |" for k, v in m["stages_wall_s"].items()
    ]
    total_compile = sum(v for v in compile_s.values() if v)
    return lines + [f"| total | {m['headline']['total_wall_s']:.1f} | {total_compile:.1f} |"]


def write_report(config, workdir: str, summaries: dict, seconds: dict) -> dict:
    """Writes workdir/report.md, workdir/metrics.json, win_rates.png and ppo_curves.png."""
    models = summaries["evaluate"]["models"]
    rank, rm = summaries["rank"], summaries["rm"]
    win = {n: m["win_rate_vs_baseline"]["rate"] for n, m in models.items()}
    nll = {n: m.get("pretrain_nll") for n, m in models.items()}
    tax_ppo = nll["ppo_small"] - nll["sft_small"]
    tax_ptx = nll["ppo_ptx_small"] - nll["sft_small"]
    rm_accuracy = rm["heldout_pairwise_accuracy"]
    ceiling = rank["heldout_labeler_agreement"]
    checks = {
        "ppo_win_rate_at_least_65": win["ppo_small"] >= 0.65,
        "ppo_ptx_win_rate_at_least_60": win["ppo_ptx_small"] >= 0.60,
        "base_zero_shot_win_rate_at_most_35": win["base_small_zero_shot"] <= 0.35,
        "rm_accuracy_within_10_points_of_agreement": abs(rm_accuracy - ceiling) <= 0.10,
        "ptx_pretrain_nll_rise_smaller_than_ppo": tax_ptx < tax_ppo,
    }
    _plot_win_rates(models, os.path.join(workdir, "win_rates.png"))
    curves = _plot_ppo_curves(workdir, os.path.join(workdir, "ppo_curves.png"))
    statements = []
    if "sft_large" in models:
        for other in ("base_large_zero_shot", "base_large_few_shot", "sft_large"):
            verdict = _compare(models["ppo_small"], models[other])
            statements.append(f"The small PPO model {verdict} the {NICE[other]} model.")
    headline = {
        "preset": config.preset,
        "ppo_reward": config.ppo.get("reward", "model"),
        **({"world_settings": changed} if (changed := presets.world_settings(config)) else {}),
        "world": {name: config.world[name] for name in presets.WORLD_SETTINGS},
        "win_rate_vs_sft": win,
        "rm_heldout_accuracy": rm_accuracy,
        "labeler_agreement": ceiling,
        "pretrain_nll_rise": {"ppo": tax_ppo, "ppo_ptx": tax_ptx},
        "checks": checks,
        "total_wall_s": float(sum(s for s in seconds.values() if s)),
    }
    metrics = {
        "headline": headline,
        "stages_wall_s": seconds,
        "stages_compile_s": {name: summaries[name].get("compile_s") for name in seconds},
        "models": models,
        "rank": rank,
        "rm_families": summaries["rm_families"]["by_family"],
        "best_of_n": summaries["best_of_n"],
        "rm": {k: v for k, v in rm.items() if k.startswith(("heldout", "eval", "train"))},
        "ppo": {k: summaries[k] for k in ("ppo", "ppo_ptx")},
        "ppo_curves": curves,
        "statements": statements,
    }
    if summaries["evaluate"].get("extra_models"):
        metrics["extra_models"] = summaries["evaluate"]["extra_models"]
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    with open(os.path.join(workdir, "report.md"), "w") as f:
        f.write(_markdown(config, workdir, metrics))
    return metrics


def _family_outcomes(models: dict, names=("ppo_small", "ppo_ptx_small")) -> list[str]:
    """Wins/ties/losses against SFT per task family, and what the win-rate targets ask of them.

    A win rate is 0.5 + (wins - losses) / (2 n), so 65% needs wins - losses >= 0.3 n; prompts
    where SFT's answer already has the highest gold total can only be tied."""
    tables = {name: models[name]["outcomes_by_family"] for name in names}
    first = next(iter(tables.values()))
    lines = [
        "### Against SFT, task family by task family\n",
        "Wins / ties / losses of each model's answer against SFT's on the same prompt.\n",
        "| task family | prompts | SFT's answer already the best there is | "
        + " | ".join(NICE.get(name, name) for name in names)
        + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for family, row in first.items():
        cells = [
            f"{t[family]['wins']} / {t[family]['ties']} / {t[family]['losses']}"
            for t in tables.values()
        ]
        lines.append(
            f"| {family} | {row['n']} | {row['baseline_at_max']} | " + " | ".join(cells) + " |"
        )
    n = sum(row["n"] for row in first.values())
    at_max = sum(row["baseline_at_max"] for row in first.values())
    net = {name: sum(r["wins"] - r["losses"] for r in t.values()) for name, t in tables.items()}
    lines += [
        "",
        f"SFT's answer already has the highest gold total on {at_max} of the {n} prompts, which "
        f"another model can only tie. A 65% win rate needs wins - losses >= {0.3 * n:.0f} "
        f"(60%: >= {0.2 * n:.0f}) on the other {n - at_max}; "
        + ", ".join(f"{NICE.get(name, name)} has {v:+d}" for name, v in net.items())
        + ".",
        "",
    ]
    return lines


def _ppo_settings(p) -> str:
    """One line: PPO's budget and what it optimises (the RM, or the gold labeler itself)."""
    reward = (
        "**the gold labeler's score** (a diagnostic of PPO with a perfect reward, not the "
        "InstructGPT recipe)"
        if p.get("reward", "model") == "gold"
        else "the reward model's score"
    )
    samples = p.get("samples_per_prompt", 1)
    advantage = (
        f"each response's return minus the mean of the other {samples - 1} to its prompt"
        if p.get("advantage", "gae") == "leave_one_out"
        else "GAE on the value model"
    )
    return (
        f"{p.iterations} iterations of {p.batch_size} prompts x {samples} "
        f"sample{'s' if samples > 1 else ''} "
        f"({p.epochs} epochs x {p.minibatches} minibatches each) sampled at temperature "
        f"{p.get('temperature', 1.0):g}, learning rate "
        f"{p.learning_rate:g} (value model {p.get('value_learning_rate', p.learning_rate):g}), "
        f"KL coefficient {p.kl_coef:g}; reward: {reward} minus the KL penalty; advantages: "
        f"{advantage}; PPO-ptx adds {p.ptx_coef:g} x the NLL of {p.ptx_batch_size} pretraining "
        f"rows per iteration ({_ptx_layout(p.get('ptx_documents_per_row', 1))})."
    )


def _ptx_layout(per_row: int) -> str:
    if per_row == 1:
        return "one padded row per document"
    return f"whole documents packed up to {per_row} to a row, each attending to itself"


def _habit_columns(headline: dict, models: dict) -> list[tuple[str, str]]:
    """(column title, metrics key) of the demonstrators' habits of style that the run's world
    (its `headline`) switches on, with the exact-answer rate once they are dropped (none when no
    habit is on, or for reports older than these metrics)."""
    # Runs made before the headline held the whole world name only the settings they changed,
    # from defaults that had every habit off.
    world = headline.get("world", headline.get("world_settings", {}))
    columns = [
        (title, key)
        for rate, title, key in (
            ("demo_filler_rate", "opens with a filler (harmless)", "filler_on_harmless"),
            ("demo_signoff_rate", "ends with a sign-off (harmless)", "signoff_on_harmless"),
        )
        if world.get(rate, 0) > 0
    ]
    if columns:
        columns.append(("exact once those are dropped", "correct_without_habits"))
    if not all(key in x for x in models.values() for _, key in columns):
        return []
    return columns


def _habits_line(world: dict) -> str:
    """The demonstrators' habits the rankers do not share, as the run's world had them."""
    signoff, filler, guess = (
        f"{100 * world.get(f'demo_{name}_rate', 0):.0f}%" for name in ("signoff", "filler", "guess")
    )
    variants = world.get("demo_signoff_variants", 1)
    closers = "always the same one" if variants == 1 else f"{variants} different ones"
    return (
        "Demonstrators' habits the rankers do not share (the gold labeler marks each down): a "
        f"closing sign-off on {signoff} of the right answers to harmless requests ({closers}), an "
        f"opening filler on {filler}, a guess on {guess} of the closed-domain questions the facts "
        "do not answer.\n"
    )


def _markdown(config, workdir: str, m: dict) -> str:
    h, models, rank = m["headline"], m["models"], m["rank"]
    # Only where the demonstrators have habits of style (`world.demo_filler_rate`,
    # `world.demo_signoff_rate`): style or skill?
    habits = _habit_columns(h, models)
    lines = [
        f"# InstructGPT on the instruction world ({h['preset']} preset)\n",
        f"{next(iter(models.values()))['n']} held-out prompts, "
        + (
            "greedy decoding"
            if config.eval.temperature == 0
            else f"sampling at temperature {config.eval.temperature}"
        )
        + ", judged by the gold labeler. Intervals are 95% (bootstrap over prompts for win rates, "
        "Wilson for rates).\n",
        *(
            [f"World settings changed from the defaults: {h['world_settings']}.\n"]
            if h.get("world_settings")
            else []
        ),
        *([_habits_line(h["world"])] if "world" in h else []),
        "## Win rate against the small SFT model (Figure 1 analogue)\n",
        "![win rates](win_rates.png)\n",
        "| model | win rate vs SFT | exact answers | hallucination (closed-domain) "
        "| refusal (harmful) | hurtful (harmful) | refusal (harmless) "
        + "".join(f"| {title} " for title, _ in habits)
        + "| pretraining NLL |",
        "| --- " * (8 + len(habits)) + "|",
    ]
    for name, x in models.items():
        nll = x.get("pretrain_nll")
        lines.append(
            f"| {NICE.get(name, name)} | {_pct(x['win_rate_vs_baseline'])} | {_pct(x['correct'])} "
            f"| {_pct(x['hallucination'])} | {_pct(x['refusal_on_harmful'])} "
            f"| {_pct(x['hurtful_on_harmful'])} | {_pct(x['refusal_on_harmless'])} "
            + "".join(f"| {_pct(x[key])} " for _, key in habits)
            + f"| {'n/a' if nll is None else f'{nll:.3f}'} |"
        )
    extra = list(m.get("extra_models", {}))  # names of the eval.extra_models
    if extra:
        lines += ["", "Models from other runs (`eval.extra_models`), answering zero-shot:"]
        lines += [f"- {name}: `{path}`" for name, path in m["extra_models"].items()]
    lines += [""] + m["statements"] + [""]
    lines += _family_outcomes(models, ("ppo_small", "ppo_ptx_small", *extra))
    lines += [
        "## Reward model\n",
        f"- Rankings: {rank['ranked_prompts']} prompts, mean K = {rank['mean_k']:.1f} distinct "
        f"samples, {rank['pairs']} pairs ({rank['prompts_with_under_2_distinct_samples']} prompts "
        "skipped: fewer than 2 distinct non-empty samples).",
        f"- Noisy labelers: temperature {rank['labeler_temperature']:.3f}; two labelers agree on "
        f"**{100 * rank['heldout_labeler_agreement']:.1f}%** of held-out pairs (expected "
        f"{100 * rank['expected_labeler_agreement']:.1f}% over all pairs).",
        f"- RM held-out accuracy against the labeler: **{100 * h['rm_heldout_accuracy']:.1f}%** "
        f"(the gold ordering itself scores {100 * rank['heldout_gold_order_accuracy']:.1f}%).",
        "",
        "| task family | RM accuracy | gold ordering | held-out pairs |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {family} | {100 * x['rm_accuracy']:.1f}% | {100 * x['gold_order_accuracy']:.1f}% "
        f"| {x['pairs']} |"
        for family, x in m["rm_families"].items()
    ]
    bon = m["best_of_n"]
    wins = bon["win_rate_vs_sft_greedy"]
    lines += [
        "",
        f"### Best of {bon['n']}: what reranking the SFT model's own samples gains\n",
        f"{bon['n']} samples of the small SFT model per held-out prompt (temperature "
        f"{bon['temperature']:g}), gold win rate against its greedy answer:\n",
        "| choice | win rate vs SFT (greedy) |",
        "| --- | --- |",
        f"| one sample | {_pct(wins['one_sample'])} |",
        f"| the RM's best | {_pct(wins['rm_best'])} |",
        f"| the gold labeler's best (what a perfect reward gains by reranking) "
        f"| {_pct(wins['gold_best'])} |",
        "",
        f"The RM orders {100 * bon['rm_accuracy_on_gold_ordered_sample_pairs']:.1f}% of the "
        f"{bon['gold_ordered_sample_pairs']} sample pairs whose gold totals differ as the gold "
        "labeler does.",
        "",
        "## The alignment tax (pretraining-data NLL, nats/token)\n",
        f"- SFT {models['sft_small']['pretrain_nll']:.3f}, PPO "
        f"{models['ppo_small']['pretrain_nll']:.3f} ({h['pretrain_nll_rise']['ppo']:+.3f}), "
        f"PPO-ptx {models['ppo_ptx_small']['pretrain_nll']:.3f} "
        f"({h['pretrain_nll_rise']['ppo_ptx']:+.3f}).",
        "",
        "## PPO training\n",
        _ppo_settings(config.ppo),
        "",
        "![ppo curves](ppo_curves.png)\n",
        "## Acceptance checks (as measured; not tuned)\n",
    ]
    lines += [f"- {k}: {'met' if v else '**not met**'}" for k, v in h["checks"].items()]
    lines += ["", "## Wall time per stage\n", *_stage_time_table(m), "", "## Sample responses\n"]
    lines += _samples(workdir)
    return "\n".join(lines) + "\n"


def _samples(workdir: str, per_family: int = 1) -> list[str]:
    path = os.path.join(workdir, "evaluate", "responses.jsonl")
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    from rlhf_jax.world import tasks

    cell = lambda text: text.replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| prompt | SFT | PPO | PPO-ptx |", "| --- | --- | --- | --- |"]
    seen: dict[str, int] = {}
    for row in rows:
        family = tasks.parse_task(row["prompt"]).family
        if seen.get(family, 0) >= per_family:
            continue
        seen[family] = seen.get(family, 0) + 1
        answers = [
            f"{cell(row[n]['response'])} ({row[n]['gold']:+.2f})"
            for n in ("sft_small", "ppo_small", "ppo_ptx_small")
        ]
        lines.append(f"| {cell(row['prompt'][-160:])} | " + " | ".join(answers) + " |")
    return lines


def summary_table(metrics: dict) -> str:
    """The README's table: each model's win rate against SFT and its rates, from metrics.json
    (with the demonstrators' habits of style as columns where the run's world had them)."""
    habits = _habit_columns(metrics["headline"], metrics["models"])
    lines = [
        "| model | win rate vs small SFT | exact answers | hallucination | refusal (harmful) "
        "| refusal (harmless) "
        + "".join(f"| {title} " for title, _ in habits)
        + "| pretraining NLL |",
        "| --- " * (7 + len(habits)) + "|",
    ]
    for name, x in metrics["models"].items():
        nll = x.get("pretrain_nll")
        lines.append(
            f"| {NICE.get(name, name)} | {_pct(x['win_rate_vs_baseline'])} | "
            f"{100 * x['correct']['rate']:.1f}% | {100 * x['hallucination']['rate']:.1f}% | "
            f"{100 * x['refusal_on_harmful']['rate']:.1f}% | "
            f"{100 * x['refusal_on_harmless']['rate']:.1f}% | "
            + "".join(f"{100 * x[key]['rate']:.1f}% | " for _, key in habits)
            + f"{'n/a' if nll is None else f'{nll:.3f}'} |"
        )
    return "\n".join(lines)


def compare_table(runs: dict[str, dict]) -> str:
    """Each model's win rate against its own run's small SFT model, one column per run.

    Args:
      runs: {label: a run's metrics.json}, e.g. runs of the main job in different worlds.
    """
    lines = [
        "| model | " + " | ".join(runs) + " |",
        "| --- " * (len(runs) + 1) + "|",
    ]
    for name in _shared_models({label: m["models"] for label, m in runs.items()}):
        cells = [_pct(m["models"][name]["win_rate_vs_baseline"]) for m in runs.values()]
        lines.append(f"| {NICE.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_compare(runs: dict[str, dict], path: str) -> None:
    """Grouped bars of `compare_table` (95% bootstrap intervals) as a PNG at `path`."""
    _plot_win_rate_bars(
        {label: m["models"] for label, m in runs.items()},
        path,
        "Each run's models against its own SFT model (95% bootstrap intervals)",
        figsize=(9, 3.8),
    )


# Figures a rerun of the same job need not repeat: wall times, compile times, throughputs.
TIMING_SUFFIXES = ("wall_s", "compile_s", "tokens_per_s")


def without_timings(tree):
    """`tree` (a run's metrics.json) without its entries whose keys end in `TIMING_SUFFIXES`."""
    if isinstance(tree, dict):
        return {k: without_timings(v) for k, v in tree.items() if not k.endswith(TIMING_SUFFIXES)}
    return tree


def differences(run: dict, reference: dict, path: str = "metrics") -> list[str]:
    """One line for each entry where two runs' metrics differ, timings aside (`without_timings`):
    a value that differs, or a key that only one of them has. Empty when they are equal."""
    run, reference = without_timings(run), without_timings(reference)
    if not (isinstance(run, dict) and isinstance(reference, dict)):
        return [] if run == reference else [f"{path}: {run!r} != {reference!r}"]
    lines = []
    for key in sorted(set(run) | set(reference), key=str):
        if key not in run or key not in reference:
            lines.append(
                f"{path}.{key}: only in {'the reference' if key in reference else 'the run'}"
            )
        else:
            lines += differences(run[key], reference[key], f"{path}.{key}")
    return lines
