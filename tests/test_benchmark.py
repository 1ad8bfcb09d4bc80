"""The benchmark script runs every workload end to end and prints well-formed JSON lines (tiny
sizes), with the transformers/PyTorch baseline measured in the same run."""

import json
import platform
import subprocess
import sys

WORKLOAD_NAMES = [
    "a_sft_step",
    "b_reward_step",
    "c_generation",
    "d_rollout_scoring",
    "e_ppo_update",
]


def test_benchmark_prints_one_json_line_per_workload_with_torch_baseline():
    out = subprocess.run(
        [sys.executable, "-m", "experiments.benchmark", "--preset=tiny", "--repeats=2"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    results = {r["workload"]: r for r in map(json.loads, lines)}
    assert list(results) == WORKLOAD_NAMES, out.stdout
    for result in results.values():
        jax_stats, torch_stats = result["jax"], result["torch"]
        assert jax_stats["runs"] == 2 and torch_stats["runs"] == 2
        assert jax_stats["compile_s"] > 0 and 0 < jax_stats["fraction_of_matmul_peak"]
        assert jax_stats["min_s"] <= jax_stats["median_s"] <= jax_stats["max_s"]
        rate = next(k for k in jax_stats if k.endswith("_per_s") and k != "model_flops_per_s")
        expected_ratio = jax_stats[rate] / torch_stats[rate]
        assert abs(result["speedup_jax_over_torch"] - expected_ratio) < 1e-9
        assert result["shape"]["new"] == 4 and result["date"]
        # Memory: every workload's program needs temporaries (activations at least).
        assert jax_stats["xla_temp_mib"] > 0
        for stats in (jax_stats, torch_stats):
            assert stats["peak_rss_growth_mib"] is None or stats["peak_rss_growth_mib"] >= 0
    # Both sides compute the same numbers (same weights), so the timing compares like with like:
    # (a) and (b) the losses of the first two training steps (the second after one AdamW update),
    # (d) every output.
    assert results["a_sft_step"]["loss_abs_diff_vs_torch"] < 1e-4
    assert results["b_reward_step"]["loss_abs_diff_vs_torch"] < 1e-4
    assert results["d_rollout_scoring"]["max_abs_diff_vs_torch"] < 1e-4
    # The README table is rendered from these lines.
    from rlhf_jax.benchmarks import markdown_table

    table = markdown_table(list(results.values())).splitlines()
    rows = [line for line in table if line.startswith("| ") and "_" in line.split("|")[1]]
    assert [row.split("|")[1].strip() for row in rows] == list(results)
    for row, result in zip(rows, results.values(), strict=True):
        assert f"{result['speedup_jax_over_torch']:.2f}x" in row


def test_torch_follows_jax_onto_the_device_and_refuses_a_missing_gpu():
    import pytest
    import torch

    from rlhf_jax.benchmarks import resolve_torch_device

    # JAX runs on CPU here, so auto keeps torch on the CPU even where torch could see a GPU.
    assert resolve_torch_device("auto") == "cpu"
    assert resolve_torch_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_torch_device("cuda")


def test_table_reports_the_gpu_memory_of_a_cuda_baseline():
    from rlhf_jax.benchmarks import markdown_table

    stats = dict(median_s=0.5, min_s=0.4, max_s=0.6, runs=5, peak_rss_growth_mib=0.0)
    result = dict(
        workload="a_sft_step",
        unit="trained tokens/s",
        jax=dict(
            stats,
            tokens_per_s=200.0,
            model_flops_per_s=1e9,
            compile_s=1.0,
            fraction_of_matmul_peak=0.5,
            xla_temp_mib=10.0,
        ),
        torch=dict(stats, tokens_per_s=100.0, device="cuda", device_peak_mib=1234.0, version="x"),
        speedup_jax_over_torch=2.0,
        date="2026-11-26",
        machine="m",
        device="gpu:H200",
        jax_version="v",
    )
    table = markdown_table([result])
    assert "torch x on cuda" in table.splitlines()[0]
    assert "| 1,234 MiB GPU | **2.00x** |" in table


def test_table_from_saved_stdout_skips_the_printed_table_and_names_xla_flags(tmp_path):
    """`--from_jsonl` reads a file saved from stdout, JSON lines followed by the table, and the
    table's first line names the XLA flags the run had."""
    with open("experiments/results/benchmark_gpu_h200_xla_flags/no_triton_gemm.jsonl") as f:
        lines = [line for line in f if line.strip()]
    assert len(lines) == 5 and all(line.startswith("{") for line in lines)
    from rlhf_jax.benchmarks import markdown_table

    table = markdown_table([json.loads(line) for line in lines])
    saved = tmp_path / "saved_stdout.jsonl"
    saved.write_text("".join(lines) + "\n" + table + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "experiments.benchmark", f"--from_jsonl={saved}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.strip() == table.strip()
    assert "XLA_FLAGS='--xla_gpu_enable_triton_gemm=false'" in table.splitlines()[0]
    assert table.count("| e_ppo_update |") == 1


def test_readme_benchmark_tables_are_the_saved_runs_rendered():
    """Every row of the README's full benchmark tables is `--from_jsonl`'s rendering of a
    committed run, figure for figure."""
    from rlhf_jax.benchmarks import markdown_table

    with open("README.md") as f:
        readme = f.read()
    for path in (
        "experiments/results/benchmark_cpu.jsonl",
        "experiments/results/benchmark_gpu_h200.jsonl",
        "experiments/results/benchmark_gpu_h100_gpt2/no_triton_gemm.jsonl",
    ):
        with open(path) as f:
            results = [json.loads(line) for line in f if line.startswith("{")]
        assert len(results) == 5, path
        rows = [line for line in markdown_table(results).splitlines() if line.startswith("| ")]
        workload_rows = rows[2:]
        assert len(workload_rows) == 5
        for row in workload_rows:
            assert row in readme, (path, row)


def test_readme_xla_defaults_table_is_the_saved_h100_runs():
    """The README's GPT-2-small table of cuBLAS GEMMs against XLA's defaults quotes each saved
    run's rate and compile time, for every workload."""
    with open("README.md") as f:
        readme = f.read()
    folder = "experiments/results/benchmark_gpu_h100_gpt2"
    cells = {}
    for name in ("no_triton_gemm", "xla_defaults_e_b_d", "xla_defaults_c_a"):
        with open(f"{folder}/{name}.jsonl") as f:
            for result in map(json.loads, f):
                stats = result["jax"]
                rate = next(k for k in stats if k.endswith("_per_s") and k != "model_flops_per_s")
                unit = result["unit"].split(" (")[0]
                cell = f"{stats[rate]:,.0f} {unit}, {stats['compile_s']:.1f} s"
                cells.setdefault(result["workload"], []).append(cell)
    assert sorted(cells) == sorted(WORKLOAD_NAMES)
    for workload, (cublas, defaults) in cells.items():
        assert f"| {workload} | {cublas} | {defaults} |" in readme


def test_cpu_description_names_the_model_generation_and_vector_width(tmp_path):
    """Two hosts both called "AMD EPYC" gave different JAX/PyTorch ratios, so a result records the
    CPU family/model and its widest vector extension, read from the first processor's block."""
    from rlhf_jax.benchmarks import cpu_description

    cpuinfo = tmp_path / "cpuinfo"
    block = (
        "processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
        "model name\t: AMD EPYC\nflags\t\t: fpu sse avx avx2 fma avx512f avx512bw\n"
    )
    cpuinfo.write_text(block.format(n=0) + "\n" + block.format(n=1).replace("26", "25"))
    assert cpu_description(str(cpuinfo)) == "AMD EPYC, family 26 model 2, avx512"
    cpuinfo.write_text("model name\t: Some CPU\nflags\t\t: sse avx avx2\n")
    assert cpu_description(str(cpuinfo)) == "Some CPU, avx2"
    assert cpu_description(str(tmp_path / "missing")) == (platform.processor() or "?")


CPU_RUNS = [
    "experiments/results/benchmark_cpu_2026-11-25.jsonl",
    "experiments/results/benchmark_cpu_before_target_logprobs.jsonl",
    "experiments/results/benchmark_cpu_target_logprobs.jsonl",
    "experiments/results/benchmark_cpu_target_logprobs_repeat.jsonl",
    "experiments/results/benchmark_cpu.jsonl",
    "experiments/results/benchmark_cpu_repeat.jsonl",
]


def _span(values, digits: int = 2) -> str:
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}x"


def test_readme_cpu_hosts_table_and_ranges_are_the_saved_runs():
    """The README's table of JAX / PyTorch ratios on the CPU hosts is `--ratios` of the saved runs
    (command and output), and the ranges its prose quotes are theirs: this host's runs before and
    after each change, the status line, and the matmul kernels' rates on both hosts."""
    from rlhf_jax.benchmarks import ratio_table, read_jsonl

    with open("README.md") as f:
        readme = f.read()
    assert ratio_table(CPU_RUNS) in readme
    command = "--ratios=" + ",".join(p.replace("experiments/results", "$R") for p in CPU_RUNS)
    assert command in readme
    flat = " ".join(readme.split())
    ratio = {
        path: {r["workload"]: r["speedup_jax_over_torch"] for r in read_jsonl(path)}
        for path in CPU_RUNS
    }
    old, before, logprobs, logprobs_again, now, again = ratio.values()
    since_logprobs = (logprobs, logprobs_again, now, again)
    current = (now, again)
    others = ("c_generation", "d_rollout_scoring", "e_ppo_update")
    # The headline: faster on four workloads in every current run, the reward model level.
    assert all(run[k] > 1 for run in current for k in ("a_sft_step", *others))
    quoted = [
        f"in this run {now['a_sft_step']:.2f}x on the SFT step and "
        f"{_span([now[k] for k in others], 1)} on generation, scoring and the PPO update, with the "
        f"reward-model step at {now['b_reward_step']:.2f}x",
        f"the SFT step {_span([r['a_sft_step'] for r in since_logprobs])} and the reward-model "
        f"step {_span([r['b_reward_step'] for r in since_logprobs])}, which is level",
        f"faster on four, {_span([r[k] for r in current for k in ('a_sft_step', *others)])}, "
        f"and level on the reward-model step, {_span([r['b_reward_step'] for r in current])}",
        f"slower than PyTorch ({old['a_sft_step']:.2f}x, {old['b_reward_step']:.2f}x)",
        f"was level on the SFT step ({before['a_sft_step']:.2f}x)",
        f"(a) from {before['a_sft_step']:.2f}x to "
        f"{_span([logprobs['a_sft_step'], logprobs_again['a_sft_step']])}",
        f"from {before['d_rollout_scoring']:.2f}x to "
        f"{_span([logprobs['d_rollout_scoring'], logprobs_again['d_rollout_scoring']])}",
        f"(a) went from {_span([logprobs['a_sft_step'], logprobs_again['a_sft_step']])} to "
        f"{_span([now['a_sft_step'], again['a_sft_step']])}",
        "yet the training steps gain far less "
        f"({_span([r[k] for r in since_logprobs for k in ('a_sft_step', 'b_reward_step')])})",
    ]
    for text in quoted:
        assert text in flat, text

    def rates(path: str, key: str, transposed: bool | None = None) -> str:
        rows = [r for r in read_jsonl(path) if transposed in (None, r["rhs_transposed"])]
        values = [r[key] for r in rows]
        return f"{min(values):.0f}-{max(values):.0f}"

    old_mm = "experiments/results/benchmark_matmuls_cpu_2026-11-25.jsonl"
    new_mm = "experiments/results/benchmark_matmuls_cpu.jsonl"
    quoted = [
        f"ran at {rates(old_mm, 'jax_gflops')} GFLOP/s against torch's "
        f"{rates(old_mm, 'torch_gflops')} there",
        f"the backward's dy @ W^T shapes {rates(old_mm, 'jax_gflops', True)} against "
        f"{rates(old_mm, 'torch_gflops', True)}",
        f"and at {rates(new_mm, 'jax_gflops')} against {rates(new_mm, 'torch_gflops')} here",
    ]
    for text in quoted:
        assert text in flat, text
    speedups = [r["jax_gflops"] / r["torch_gflops"] for r in read_jsonl(new_mm)]
    assert f"faster than torch's by {_span(speedups, 1)}" in flat


def test_phases_split_the_training_steps_on_both_sides_and_the_readme_quotes_the_saved_run():
    """`--phases` times (a) and (b) as forward, gradients and whole step in rlhf_jax and torch
    (tiny sizes here), prints JSON lines and the table; the README's phase table and the figures
    its prose quotes are the saved run's."""
    out = subprocess.run(
        [sys.executable, "-m", "experiments.benchmark", "--phases", "--preset=tiny", "--repeats=2"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    from rlhf_jax.benchmarks import phases_table, read_jsonl

    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["workload"] for r in results] == ["a_sft_step", "b_reward_step"]
    for result in results:
        assert result["repeats"] == 2 and result["preset"]["width"] == 32
        for side in ("jax", "torch"):
            assert sorted(result[side]) == ["forward_s", "gradients_s", "step_s"]
            assert all(seconds > 0 for seconds in result[side].values())
    assert phases_table(results) in out.stdout
    saved = read_jsonl("experiments/results/benchmark_phases_cpu.jsonl")
    with open("README.md") as f:
        readme = f.read()
    assert phases_table(saved) in readme
    sft, rm = saved
    earlier_sft, earlier_rm = read_jsonl(
        "experiments/results/benchmark_phases_cpu_before_top_token_accuracy.jsonl"
    )
    flat = " ".join(readme.split())
    speed = lambda r, key: r["torch"][key] / r["jax"][key]  # noqa: E731
    backward = lambda r, side: r[side]["gradients_s"] - r[side]["forward_s"]  # noqa: E731
    rest = lambda r, side: r[side]["step_s"] - r[side]["gradients_s"]  # noqa: E731
    back_speed = lambda r: backward(r, "torch") / backward(r, "jax")  # noqa: E731
    quoted = [
        f"the whole steps are {speed(sft, 'step_s'):.2f}x (SFT) and {speed(rm, 'step_s'):.2f}x "
        f"(reward model) PyTorch's here, and {speed(earlier_sft, 'step_s'):.2f}x and "
        f"{speed(earlier_rm, 'step_s'):.2f}x in the run before",
        f"({speed(sft, 'forward_s'):.2f}x on the SFT step, {speed(rm, 'forward_s'):.2f}x on the "
        f"reward model's; {speed(earlier_sft, 'forward_s'):.2f}x and "
        f"{speed(earlier_rm, 'forward_s'):.2f}x in the run before",
        f"({back_speed(sft):.2f}x for both here, {back_speed(earlier_sft):.2f}x for the SFT step "
        "in the run before)",
        f"ran slower than the whole step here ({sft['jax']['gradients_s']:.2f} s against "
        f"{sft['jax']['step_s']:.2f} s for the SFT step, {rm['jax']['gradients_s']:.2f} s against "
        f"{rm['jax']['step_s']:.2f} s for the reward model)",
        f"the SFT step spent {rest(earlier_sft, 'jax'):.3f} s beyond its gradients, against "
        f"{rest(earlier_sft, 'torch'):.3g} s of AdamW in torch",
    ]
    assert f"{back_speed(sft):.2f}" == f"{back_speed(rm):.2f}"  # "for both here"
    for text in quoted:
        assert text in flat, text


def test_benchmarks_package_imports_neither_torch_nor_experiments():
    """The library's benchmarks import torch/transformers only inside the functions that time the
    baseline, and nothing of `experiments` (the command line sits on top of the library)."""
    code = (
        "import sys; import rlhf_jax.benchmarks; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'experiments')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


def test_lora_workload_matches_peft_and_needs_a_llama_preset():
    """(f) on the tiny Llama preset: the first two LoRA steps' losses equal transformers + peft's
    with the same base and adapters (so the timing compares like with like), and only the
    adapters are trained; a GPT-2 preset is refused (peft names its fused attention otherwise)."""
    import pytest

    from rlhf_jax.benchmarks import run_workloads

    (result,) = run_workloads(["f"], "tiny_llama", repeats=1, threads=2, with_torch=True)
    assert result["workload"] == "f_sft_lora_step"
    assert result["loss_abs_diff_vs_torch"] < 1e-5
    assert 0 < result["trained_parameters"] < 10_000
    assert result["speedup_jax_over_torch"] > 0
    with pytest.raises(ValueError, match="Llama-family preset"):
        list(run_workloads(["f"], "tiny", repeats=1, threads=2, with_torch=False))


def test_readme_smollm2_table_is_the_saved_run_rendered():
    """The README's table at the SmolLM2-135M shape (workloads a, f, c) is `--from_jsonl`'s
    rendering of the committed run, figure for figure, with peak memory on both sides."""
    from rlhf_jax.benchmarks import markdown_table

    with open("README.md") as f:
        readme = f.read()
    with open("experiments/results/benchmark_smollm2_cpu.jsonl") as f:
        results = [json.loads(line) for line in f if line.startswith("{")]
    assert [r["workload"] for r in results] == ["a_sft_step", "f_sft_lora_step", "c_generation"]
    assert all(r["preset"] == "smollm2" and r["shape"]["vocab"] == 49152 for r in results)
    assert all(r["torch"]["peak_rss_growth_mib"] is not None for r in results)
    rows = [line for line in markdown_table(results).splitlines() if line.startswith("| ")]
    for row in rows[2:]:
        assert row in readme, row
