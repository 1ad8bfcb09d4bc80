"""The markdown tables of benchmark results, from result dicts or from saved runs (JSON-lines
files): the README's full table (`markdown_table`), JAX / PyTorch ratios of several runs side by
side (`ratio_table`) and the phase split of the training steps (`phases_table`).

Standalone: reads only the dicts' fields, imports nothing else of the package.
"""

from __future__ import annotations

import json
import os


def _ratio(jax_over_torch: float, bold: bool = False) -> str:
    """A JAX / PyTorch speed ratio for a table, marked "(slower)" below 1."""
    text = f"{jax_over_torch:.2f}x"
    return (f"**{text}**" if bold else text) + (" (slower)" if jax_over_torch < 1 else "")


def _mib(value: float | None) -> str:
    """A memory figure in MiB for a table ("n/a" where it was not measured)."""
    return "n/a" if value is None else f"{value:,.0f} MiB"


def markdown_table(results: list[dict]) -> str:
    """The README's benchmark table from result dicts (or JSON lines read back). Memory is the
    peak resident-memory growth during the timed runs (both sides), for rlhf_jax also the
    compiled program's temporary buffers as XLA counts them, and for PyTorch on CUDA its peak
    allocated GPU memory instead."""
    first = results[0]
    torch_info = first.get("torch")
    lines = [
        f"{first['date']}, {first['machine']}, {first['device']}, jax {first['jax_version']}"
        + (
            f", torch {torch_info['version']} on {torch_info.get('device', 'cpu')}"
            if torch_info
            else ""
        )
        + (f", XLA_FLAGS={first['xla_flags']!r}" if first.get("xla_flags") else ""),
        "",
        "| workload | unit | rlhf_jax median | run spread | compile | of fp32 matmul peak "
        "| memory: RSS growth (XLA temp) | PyTorch median | run spread | PyTorch memory "
        "| JAX / PyTorch |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        j, t = r["jax"], r.get("torch")
        rate = next(k for k in j if k.endswith("_per_s") and k != "model_flops_per_s")
        row = [
            r["workload"],
            r["unit"],
            f"{j[rate]:,.0f}",
            f"{j['min_s']:.3g}-{j['max_s']:.3g} s",
            f"{j['compile_s']:.1f} s",
            f"{100 * j['fraction_of_matmul_peak']:.0f}%",
            f"{_mib(j.get('peak_rss_growth_mib'))} ({_mib(j.get('xla_temp_mib'))})",
        ]
        if t:
            row += [
                f"{t[rate]:,.0f}",
                f"{t['min_s']:.3g}-{t['max_s']:.3g} s",
                f"{_mib(t['device_peak_mib'])} GPU"
                if "device_peak_mib" in t
                else _mib(t.get("peak_rss_growth_mib")),
                _ratio(r["speedup_jax_over_torch"], bold=True),
            ]
        else:
            row += ["n/a"] * 4
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def read_jsonl(path: str) -> list[dict]:
    """Result dicts of a saved run (stdout: JSON lines, then possibly the printed table)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.startswith("{")]


def ratio_table(paths: list[str]) -> str:
    """Markdown: one row per saved run (file name, date, machine, measured fp32 matmul rate) and
    its JAX / PyTorch ratio for every workload any of the runs has ("n/a" where it has none)."""
    runs = [(path, {r["workload"]: r for r in read_jsonl(path)}) for path in paths]
    workloads = sorted({name for _, results in runs for name in results})
    lines = [
        "| run | date | machine | fp32 matmul rate | " + " | ".join(workloads) + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in workloads) + " |",
    ]
    for path, results in runs:
        first = next(iter(results.values()))
        cells = [
            f"`{os.path.basename(path)}`",
            first["date"],
            first["machine"],
            f"{first['matmul_fp32_flops_per_s'] / 1e9:,.0f} GFLOP/s",
        ]
        for name in workloads:
            ratio = results.get(name, {}).get("speedup_jax_over_torch")
            cells.append("n/a" if ratio is None else _ratio(ratio))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def phases_table(results: list[dict]) -> str:
    """Markdown: per workload, the seconds of each phase on both sides and JAX's speed relative
    to PyTorch's (torch seconds / JAX seconds)."""
    lines = [
        "| workload | phase | rlhf_jax | PyTorch | JAX / PyTorch |",
        "| --- | --- | --- | --- | --- |",
    ]
    phases = {
        "forward": lambda s: s["forward_s"],
        "backward (gradients - forward)": lambda s: s["gradients_s"] - s["forward_s"],
        "rest of the step (step - gradients)": lambda s: s["step_s"] - s["gradients_s"],
        "whole step": lambda s: s["step_s"],
    }
    for r in results:
        for phase, seconds in phases.items():
            j, t = seconds(r["jax"]), seconds(r["torch"])
            lines.append(f"| {r['workload']} | {phase} | {j:.3g} s | {t:.3g} s | {t / j:.2f}x |")
    return "\n".join(lines)
