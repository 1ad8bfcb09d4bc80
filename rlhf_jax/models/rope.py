"""Rotary position embeddings (RoPE) in transformers' "rotate half" layout, with scaling."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.models.config import RopeScaling


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> np.ndarray:
    """Per-pair rotation frequencies, float32 [head_dim // 2], in radians per position."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if scaling is None:
        pass
    elif scaling.kind == "linear":
        inv_freq = inv_freq / scaling.factor
    elif scaling.kind == "llama3":
        # Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between
        # interpolated smoothly.
        old_len = scaling.original_max_position_embeddings
        low_freq_wavelen = old_len / scaling.low_freq_factor
        high_freq_wavelen = old_len / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
        smooth = (old_len / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
        is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
        inv_freq = np.where(is_medium, smoothed, scaled)
    else:
        raise ValueError(
            f"Unsupported RoPE scaling kind {scaling.kind!r}; use 'linear' or 'llama3'."
        )
    return inv_freq.astype(np.float32)


def apply_rope(x_bthd: jax.Array, positions_bt: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotates query or key vectors by their positions.

    Args:
      x_bthd: [B, T, H, D] queries or keys.
      positions_bt: int [B, T] token positions (from the attention mask, not the array index).
      inv_freq: float32 [R // 2] from `inverse_frequencies`; the first R <= D dims of each head are
        rotated and the rest pass through (partial rotary, as in GPT-NeoX).

    Returns:
      [B, T, H, D], same dtype as `x_bthd`; angles are computed in float32.
    """
    angles_btf = positions_bt.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    angles_btd = jnp.concatenate([angles_btf, angles_btf], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles_btd), jnp.sin(angles_btd)
    rotary_dim = 2 * inv_freq.shape[0]
    x = x_bthd[..., :rotary_dim].astype(jnp.float32)
    half = rotary_dim // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out = (x * cos + rotated * sin).astype(x_bthd.dtype)
    if rotary_dim == x_bthd.shape[-1]:
        return out
    return jnp.concatenate([out, x_bthd[..., rotary_dim:]], axis=-1)
