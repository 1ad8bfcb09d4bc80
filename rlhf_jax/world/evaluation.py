"""The paper's evaluations on the instruction world, from prompts and responses as text.

`judge` scores responses with the gold labeler; `model_metrics` turns one model's judged responses
into the report's figures (each with a 95% interval): gold win rate against a baseline model's
responses to the same prompts (ties count half), exact-answer rate, hallucination rate on
closed-domain prompts, refusal and hurtful-word rates on harmful requests, unwanted refusals of
harmless requests, the shares opening with a demonstrators' filler and closing with their
sign-off, the exact-answer rate once those are dropped, and wins, ties and losses against the
baseline per task family.
`rank_responses` makes InstructGPT-style ranking records (K responses of one prompt, ordered by a
noisy labeler) for the reward model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rlhf_jax.training import stats
from rlhf_jax.world import labeler


def judge(prompts: Sequence[str], responses: Sequence[str]) -> list[labeler.GoldScores]:
    """Gold scores of `responses[i]` to `prompts[i]`."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses.")
    return [labeler.gold_scores(p, r) for p, r in zip(prompts, responses, strict=True)]


def _rate(flags: Sequence[bool]) -> dict[str, float] | None:
    """{rate, low, high, n} with a Wilson 95% interval; None when there is nothing to count."""
    if not len(flags):
        return None
    hits, n = int(np.sum(flags)), len(flags)
    low, high = stats.wilson_interval(hits, n)
    return {"rate": hits / n, "low": low, "high": high, "n": n}


def win_rate(
    scores: Sequence[labeler.GoldScores],
    baseline: Sequence[labeler.GoldScores],
    *,
    seed: int = 0,
) -> dict[str, float]:
    """Share of prompts where the model's gold total beats the baseline's (ties count half), with
    a percentile-bootstrap 95% interval over prompts."""
    outcomes = labeler.win_rates([s.total for s in scores], [b.total for b in baseline])
    low, high = stats.cluster_bootstrap_interval(outcomes, np.ones_like(outcomes), seed=seed)
    return {
        "rate": float(outcomes.mean()),
        "low": low,
        "high": high,
        "n": len(outcomes),
        "ties": float(np.mean(outcomes == 0.5)),
    }


def outcomes_by_family(
    scores: Sequence[labeler.GoldScores], baseline: Sequence[labeler.GoldScores]
) -> dict[str, dict[str, int]]:
    """{family: {wins, ties, losses, n, baseline_at_max}} against the baseline's responses to the
    same prompts; `baseline_at_max` counts prompts where the baseline already has the highest
    gold total (`labeler.BEST_TOTAL`), which a model can tie but never beat."""
    outcomes = labeler.win_rates([s.total for s in scores], [b.total for b in baseline])
    table = {}
    for family in sorted({s.family for s in scores}):
        rows = [i for i, s in enumerate(scores) if s.family == family]
        mine = outcomes[rows]
        best = [np.isclose(baseline[i].total, labeler.BEST_TOTAL) for i in rows]
        table[family] = {
            "wins": int(np.sum(mine == 1.0)),
            "ties": int(np.sum(mine == 0.5)),
            "losses": int(np.sum(mine == 0.0)),
            "n": len(rows),
            "baseline_at_max": int(np.sum(best)),
        }
    return table


def model_metrics(
    scores: Sequence[labeler.GoldScores],
    baseline: Sequence[labeler.GoldScores] | None = None,
    *,
    seed: int = 0,
) -> dict:
    """The report's figures for one model's judged responses (see the module docstring)."""
    if not len(scores):
        raise ValueError("No judged responses.")
    harmful = [s for s in scores if s.family == "harmful"]
    harmless = [s for s in scores if s.family != "harmful"]
    qa = [s for s in scores if s.family == "qa"]
    totals = np.asarray([s.total for s in scores])
    families = sorted({s.family for s in scores})
    return {
        "n": len(scores),
        "mean_gold": float(totals.mean()),
        "mean_gold_sem": float(totals.std(ddof=1) / np.sqrt(len(totals)))
        if len(totals) > 1
        else 0.0,
        "correct": _rate([s.correct for s in scores]),
        "win_rate_vs_baseline": win_rate(scores, baseline, seed=seed) if baseline else None,
        "hallucination": _rate([s.hallucinations > 0 for s in qa]),
        "refusal_on_harmful": _rate([s.refusal for s in harmful]),
        "hurtful_on_harmful": _rate([s.hurtful for s in harmful]),
        "refusal_on_harmless": _rate([s.refusal for s in harmless]),
        "filler_on_harmless": _rate([s.opens_with_filler for s in harmless]),
        "signoff_on_harmless": _rate([s.closes_with_signoff for s in harmless]),
        "correct_without_habits": _rate([s.correct_without_habits for s in scores]),
        "correct_by_family": {
            f: _rate([s.correct for s in scores if s.family == f])["rate"] for f in families
        },
        "outcomes_by_family": outcomes_by_family(scores, baseline) if baseline else None,
    }


def rank_responses(
    prompt: str,
    responses: Sequence[str],
    temperature: float,
    rng: np.random.Generator,
    totals: Sequence[float] | None = None,
) -> dict:
    """A ranking record `{prompt, responses, ranking}` (ranking[i] = rank of responses[i], 0 =
    best) from one noisy labeler; the format of `rlhf_jax.data.records.parse_ranking`.

    `totals`: the responses' gold totals where the caller has them already (`gold_totals`).
    """
    if len(responses) < 2:
        raise ValueError("A ranking needs at least 2 responses.")
    if totals is None:
        totals = [labeler.gold_score(prompt, r) for r in responses]
    elif len(totals) != len(responses):
        raise ValueError(f"{len(totals)} gold totals for {len(responses)} responses.")
    order = labeler.sample_ranking(totals, temperature, rng)
    ranks = [0] * len(responses)
    for rank, index in enumerate(order):
        ranks[index] = rank
    return {"prompt": prompt, "responses": list(responses), "ranking": ranks}


def gold_totals(prompts: Sequence[str], responses: Sequence[Sequence[str]]) -> list[list[float]]:
    """The gold labeler's total for each response of each prompt."""
    return [
        [labeler.gold_score(prompt, r) for r in row]
        for prompt, row in zip(prompts, responses, strict=True)
    ]


def pair_gaps(totals: Sequence[Sequence[float]]) -> np.ndarray:
    """Gold-total differences of all C(K, 2) response pairs of every prompt (for calibration),
    from each prompt's response totals (`gold_totals`)."""
    gaps = []
    for row in totals:
        row = np.asarray(row)
        i, j = np.triu_indices(len(row), k=1)
        gaps.append(row[i] - row[j])
    return np.concatenate(gaps) if gaps else np.zeros(0)
