"""A thin wrapper over transformers tokenizers with the conventions rlhf_jax relies on.

- User text never becomes special tokens: a prompt containing the literal "<|endoftext|>" is
  tokenized as ordinary text (`split_special_tokens=True`), so it cannot end a sequence early.
  Special tokens (BOS, EOS) are added only by this wrapper, explicitly, by id.
- Prompts are left-padded to a fixed length, and over-long prompts keep their *last* `max_len`
  tokens (the end of a prompt is what the response continues); truncations are counted.
- `trust_remote_code` is never enabled.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """tokens_bp: int32 [B, P] left-padded; mask_bp: bool [B, P]; num_truncated: rows cut."""

    tokens_bp: np.ndarray
    mask_bp: np.ndarray
    num_truncated: int


class Tokenizer:
    """transformers tokenizer + explicit special-token handling.

    Args:
      hf_tokenizer: a `transformers.PreTrainedTokenizerBase` (fast tokenizers recommended).
      eos_token: overrides the tokenizer's EOS token (string) when it has none or the wrong one.
      pad_token: overrides the pad token; default the tokenizer's, else EOS.
    """

    def __init__(self, hf_tokenizer, *, eos_token: str | None = None, pad_token: str | None = None):
        self.hf = hf_tokenizer
        if eos_token is not None:
            self.hf.eos_token = eos_token
        if pad_token is not None:
            self.hf.pad_token = pad_token
        if self.hf.eos_token_id is None:
            raise ValueError(
                "The tokenizer has no EOS token; pass eos_token=... (e.g. '<|endoftext|>')."
            )
        # Ids the tokenizer itself puts before text (e.g. Llama's BOS), found by encoding "".
        self.prefix_ids: tuple[int, ...] = tuple(self.hf("", add_special_tokens=True)["input_ids"])

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, *, revision: str | None = None, **kwargs
    ) -> Tokenizer:
        """From a local directory or hub id, through `transformers.AutoTokenizer`."""
        import transformers

        hf = transformers.AutoTokenizer.from_pretrained(
            str(name_or_path), revision=revision, trust_remote_code=False
        )
        return cls(hf, **kwargs)

    @classmethod
    def from_file(cls, tokenizer_json: str | os.PathLike, **kwargs) -> Tokenizer:
        """From a `tokenizers` JSON file (e.g. one trained locally)."""
        import transformers

        hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json))
        return cls(hf, **kwargs)

    @property
    def eos_id(self) -> int:
        return int(self.hf.eos_token_id)

    @property
    def pad_id(self) -> int:
        pad = self.hf.pad_token_id
        return self.eos_id if pad is None else int(pad)

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        """Token ids of user text; special-token strings in it stay ordinary text."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}.")
        return list(self.hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(map(int, ids)), skip_special_tokens=skip_special_tokens)

    def encode_prompts(
        self, texts: Sequence[str], max_len: int, *, add_prefix: bool = True
    ) -> PromptBatch:
        """Left-padded prompt batch of exactly `max_len` columns.

        Args:
          texts: prompt strings.
          max_len: prompt length in tokens, including the tokenizer's prefix (BOS) if any.
          add_prefix: prepend the tokenizer's own leading special ids (e.g. BOS).

        Returns:
          PromptBatch; a prompt longer than `max_len` keeps its prefix and its last tokens.
        """
        prefix = list(self.prefix_ids) if add_prefix else []
        if max_len <= len(prefix):
            raise ValueError(f"max_len={max_len} leaves no room after the prefix {prefix}.")
        tokens = np.full((len(texts), max_len), self.pad_id, np.int32)
        mask = np.zeros((len(texts), max_len), bool)
        truncated = 0
        for row, text in enumerate(texts):
            body = self.encode(text)
            room = max_len - len(prefix)
            if len(body) > room:
                body = body[len(body) - room :]
                truncated += 1
            ids = prefix + body
            tokens[row, max_len - len(ids) :] = ids
            mask[row, max_len - len(ids) :] = True
        return PromptBatch(tokens_bp=tokens, mask_bp=mask, num_truncated=truncated)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        self.hf.save_pretrained(str(directory))


def train_bpe_tokenizer(
    texts: Sequence[str], vocab_size: int, *, eos_token: str = "<|endoftext|>"
) -> Tokenizer:
    """Trains a byte-level BPE tokenizer locally with the `tokenizers` library.

    Args:
      texts: training corpus.
      vocab_size: target vocabulary size (including the 256 byte tokens and `eos_token`).
      eos_token: the one special token, also used for padding.

    Returns:
      A Tokenizer whose EOS (and pad) is `eos_token`.
    """
    import tokenizers
    import transformers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eos_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos_token)
    return Tokenizer(hf)
