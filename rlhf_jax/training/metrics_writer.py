"""Metrics to `metrics.jsonl` (one JSON object per write) and TensorBoard event files, plus a plot.

TensorBoard events are written with tensorboardX, which needs no TensorFlow. When a run resumes at
step s, JSONL records after s (written after the last checkpoint by the killed run) are dropped,
so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np


class MetricWriter:
    """Writes scalars under `workdir`: metrics.jsonl and tensorboard/ events.

    Args:
      workdir: run directory.
      resume_step: drop JSONL records with step > resume_step (None: keep the file as is).
      active: False makes every call a no-op (the non-chief processes of a multi-host run).
    """

    def __init__(
        self, workdir: str | os.PathLike, *, resume_step: int | None = None, active: bool = True
    ):
        import tensorboardX

        self.active = active
        if not active:
            return
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        if resume_step is not None and os.path.exists(self.path):
            with open(self.path) as f:
                kept = [line for line in f if json.loads(line).get("step", 0) <= resume_step]
            with open(self.path, "w") as f:
                f.writelines(kept)
        self._file = open(self.path, "a")
        self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: Mapping[str, float], *, prefix: str = "") -> None:
        if not self.active:
            return
        values = {f"{prefix}{k}": float(v) for k, v in scalars.items()}
        self._file.write(json.dumps({"step": int(step), **values}) + "\n")
        self._file.flush()
        for key, value in values.items():
            if np.isfinite(value):
                self._tb.add_scalar(key, value, int(step))
        self._tb.flush()

    def latest(self, prefix: str) -> dict[str, float]:
        """The newest logged values of each metric named `prefix`..., with the prefix removed
        ({} when none, or when inactive)."""
        if not self.active:
            return {}
        self._file.flush()
        latest = {}
        for record in read_metrics(self.path):
            latest.update({k[len(prefix) :]: v for k, v in record.items() if k.startswith(prefix)})
        return latest

    def close(self) -> None:
        if not self.active:
            return
        self._file.close()
        self._tb.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_metrics(
    path: str | os.PathLike, out_png: str | os.PathLike, keys: tuple[str, ...]
) -> None:
    """One panel per key: its value against step, from a metrics.jsonl file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(path)
    keys = tuple(k for k in keys if any(k in r for r in rows))
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        points = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*points, strict=True), marker="." if len(points) < 50 else None)
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
