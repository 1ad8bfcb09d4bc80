"""The benchmark script runs end to end and prints one well-formed JSON line (tiny sizes)."""

import json
import subprocess
import sys


def test_generation_benchmark_prints_json_with_torch_baseline():
    out = subprocess.run(
        [sys.executable, "-m", "experiments.benchmark", "--preset=tiny", "--repeats=2"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, out.stdout
    result = json.loads(lines[0])
    assert result["workload"] == "c_generation"
    jax_stats, torch_stats = result["jax"], result["torch"]
    assert jax_stats["runs"] == 2 and torch_stats["runs"] == 2
    assert jax_stats["compile_s"] > 0 and jax_stats["tokens_per_s"] > 0
    assert 0 < jax_stats["fraction_of_matmul_peak"]
    expected_ratio = jax_stats["tokens_per_s"] / torch_stats["tokens_per_s"]
    assert abs(result["speedup_jax_over_torch"] - expected_ratio) < 1e-9
    assert result["shape"]["new"] == 4 and result["date"]
