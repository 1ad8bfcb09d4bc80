"""rlhf_jax: InstructGPT-style RLHF (SFT -> reward model -> PPO-ptx) in JAX/Flax."""

import setuptools

RUNTIME = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "chex>=0.1.92",
    "transformers>=5.24,<6",  # config classes + tokenizers; never imports torch at run time
    "tokenizers>=0.23",
    "safetensors>=0.8",
    "huggingface-hub>=2.4",  # hub ids for users with internet; local dirs need no network
    "tensorflow-datasets>=4.9.10",
    "importlib_resources>=6.0",  # tfds needs it to download, but does not declare it
    "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
    "grain>=0.2.18",
    "ml_collections>=1.1",
    "absl-py>=2.5",
    "tqdm>=4.70",
    "numpy>=2.0",
    "ml_dtypes>=0.6",
    "matplotlib>=3.10",
    "filelock>=3.12",  # JAX's compilation cache locks its folder to keep it under its size limit
    "gguf>=0.19",  # GGUF checkpoints (llama.cpp's format): reader and dequantization, no torch
]

DEV = [
    "pytest>=9.0",
    "ruff>=0.17",
    # Execute the notebooks in CI (tests/test_notebooks.py).
    "nbclient>=0.10",
    "nbformat>=5.10",
    "ipykernel>=6.29",
    # Test-only PyTorch reference for logit/generation parity and the benchmark baseline. Pinned to
    # the CPU build that is available offline on these machines; a looser pin pulls a multi-GB CUDA
    # wheel.
    "torch==2.13.0",
    # transformers' own GGUF loading, the reference for rlhf_jax.models.gguf (tests only).
    "accelerate>=1.0",
    # PEFT loads rlhf_jax's LoRA export (tests only).
    "peft>=0.17",
]

setuptools.setup(
    name="rlhf_jax",
    version="0.1.0",
    description=__doc__,
    packages=setuptools.find_packages(
        include=["rlhf_jax", "rlhf_jax.*", "experiments", "experiments.*"]
    ),
    python_requires=">=3.11",
    install_requires=RUNTIME,
    extras_require={"dev": DEV},
)
