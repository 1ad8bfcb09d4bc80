"""Multi-process: 2 processes on localhost x 4 fake CPU devices each form one 8-device mesh through
`jax.distributed.initialize` (gloo collectives); an SFT step and a fused PPO rollout there equal
the single-process run on 8 devices within 1e-5 (`tests/multiprocess_worker.py`). The SFT step
runs twice: with the global batch on every process, and with each process loading only its own
rows (as the data pipeline does), assembled by `pipeline.to_global_arrays`."""

import socket
import subprocess
import sys

import numpy as np

from .test_checkpoint_resume import REPO, subprocess_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _worker(out, num_processes: int, local_devices: int, process_id: int = 0, port: int = 0):
    command = [
        sys.executable,
        "-m",
        "tests.multiprocess_worker",
        f"--num_processes={num_processes}",
        f"--process_id={process_id}",
        f"--port={port}",
        f"--local_devices={local_devices}",
        f"--out={out}",
    ]
    return subprocess.Popen(
        command, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def test_two_processes_equal_one_process_on_the_same_mesh(tmp_path):
    single = _worker(tmp_path / "single.npz", num_processes=1, local_devices=8)
    out, _ = single.communicate(timeout=300)
    assert single.returncode == 0, out.decode()[-3000:]

    port = _free_port()
    workers = [_worker(tmp_path / "multi.npz", 2, 4, process_id=i, port=port) for i in range(2)]
    for worker in workers:
        out, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0, out.decode()[-3000:]

    reference, multi = np.load(tmp_path / "single.npz"), np.load(tmp_path / "multi.npz")
    assert sorted(reference.files) == sorted(multi.files)
    assert any(k.startswith("sft/") for k in reference.files)
    assert any(k.startswith("rollout/") for k in reference.files)
    assert any(k.startswith("sft_local_rows/") for k in reference.files)
    for key in reference.files:
        expected, got = reference[key], multi[key]
        assert expected.shape == got.shape, key
        if expected.dtype.kind in "iub":  # sampled tokens and masks: identical
            np.testing.assert_array_equal(got, expected, err_msg=key)
        else:
            np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0, err_msg=key)
    assert np.isfinite(reference["sft_loss"]).all()
