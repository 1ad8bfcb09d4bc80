"""Confidence intervals for accuracies."""

from __future__ import annotations

import math

import numpy as np


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if trials <= 0:
        raise ValueError("wilson_interval needs trials > 0.")
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def cluster_bootstrap_interval(
    correct: np.ndarray,
    pairs: np.ndarray,
    *,
    seed: int = 0,
    resamples: int = 2000,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(correct) / sum(pairs), resampling prompts (clusters),
    so that pairs of one prompt are not treated as independent.

    Args:
      correct: [N] correctly ordered pairs per prompt.
      pairs: [N] labelled pairs per prompt (> 0).
    """
    correct = np.asarray(correct, np.float64)
    pairs = np.asarray(pairs, np.float64)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(pairs), (resamples, len(pairs)))
    ratios = correct[index].sum(1) / pairs[index].sum(1)
    tail = (1 - level) / 2
    return float(np.quantile(ratios, tail)), float(np.quantile(ratios, 1 - tail))
