"""A thin wrapper over transformers tokenizers with the conventions rlhf_jax relies on.

- User text never becomes special tokens: a prompt containing the literal "<|endoftext|>" is
  tokenized as ordinary text (`split_special_tokens=True`), so it cannot end a sequence early.
  Special tokens (BOS, EOS) are added only by this wrapper, explicitly, by id.
- Prompts are left-padded to a fixed length, and over-long prompts keep their *last* `max_len`
  tokens (the end of a prompt is what the response continues); truncations are counted.
- A tokenizer with a chat template (`chat_template="auto"`, the default, or "on") reads every
  prompt as the user's message with the assistant's turn opened after it, as transformers'
  `apply_chat_template(..., add_generation_prompt=True)` renders it. The template's own text is
  tokenized with its special tokens; the user's text never is, so "<|im_start|>" typed by a user
  stays text. An over-long prompt keeps the template around it and the end of the user's text.
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


# Stands for the user's text while a chat template is rendered (private-use code points, which no
# template rewrites).
_USER_TEXT = "\ue000rlhf_jax user text\ue001"
CHAT_TEMPLATE_CHOICES = ("auto", "on", "off")


class Tokenizer:
    """transformers tokenizer + explicit special-token handling.

    Args:
      hf_tokenizer: a `transformers.PreTrainedTokenizerBase` (fast tokenizers recommended).
      eos_token: overrides the tokenizer's EOS token (string) when it has none or the wrong one.
      pad_token: overrides the pad token; default the tokenizer's, else EOS.
      chat_template: "auto" formats prompts with the tokenizer's chat template when it has one,
        "on" requires one, "off" reads prompts as plain text after the tokenizer's prefix.
    """

    def __init__(
        self,
        hf_tokenizer,
        *,
        eos_token: str | None = None,
        pad_token: str | None = None,
        chat_template: str = "auto",
    ):
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
        if chat_template not in CHAT_TEMPLATE_CHOICES:
            raise ValueError(
                f"chat_template={chat_template!r}; expected one of {CHAT_TEMPLATE_CHOICES}."
            )
        has_template = bool(getattr(self.hf, "chat_template", None))
        if chat_template == "on" and not has_template:
            raise ValueError(
                "chat_template='on', but the tokenizer has no chat template; use 'auto' or 'off' "
                "(config: tokenizer.chat_template)."
            )
        self.uses_chat_template = has_template and chat_template != "off"
        # The ids around a prompt's text: the prefix, or the chat template's turns.
        self._prompt_head, self._prompt_tail = (
            self._chat_turn_ids() if self.uses_chat_template else (list(self.prefix_ids), [])
        )

    def _chat_turn_ids(self) -> tuple[list[int], list[int]]:
        """(ids before, ids after) the user's text in a one-message chat with the assistant's turn
        opened, each tokenized with the template's special tokens."""
        rendered = self.hf.apply_chat_template(
            [{"role": "user", "content": _USER_TEXT}], tokenize=False, add_generation_prompt=True
        )
        if rendered.count(_USER_TEXT) != 1:
            raise ValueError("The chat template does not show the user's message text unchanged.")
        before, after = rendered.split(_USER_TEXT)
        template_ids = lambda text: list(self.hf(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        return template_ids(before), template_ids(after)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, *, revision: str | None = None, **kwargs
    ) -> Tokenizer:
        """From a local directory or hub id, through `transformers.AutoTokenizer`; `kwargs` as
        for the constructor."""
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

    def prompt_ids(self, text: str, max_len: int | None = None) -> tuple[list[int], bool]:
        """(ids of a prompt as the model reads it, whether it was cut).

        The ids are the tokenizer's prefix (e.g. BOS) and the text, or, with the chat template in
        use, the template's turns around the text as the user's message. A prompt longer than
        `max_len` keeps the prefix or turns and the last tokens of the text.
        """
        head, tail = self._prompt_head, self._prompt_tail
        if max_len is not None and max_len <= len(head) + len(tail):
            raise ValueError(
                f"max_len={max_len} leaves no room after the prefix or chat template's turns "
                f"({len(head) + len(tail)} ids: {head} ... {tail})."
            )
        body = self.encode(text)
        if max_len is None or len(head) + len(body) + len(tail) <= max_len:
            return head + body + tail, False
        room = max_len - len(head) - len(tail)
        return head + body[len(body) - room :] + tail, True

    def encode_prompts(
        self, texts: Sequence[str], max_len: int, *, add_prefix: bool = True
    ) -> PromptBatch:
        """Left-padded prompt batch of exactly `max_len` columns.

        Args:
          texts: prompt strings.
          max_len: prompt length in tokens, the prefix or chat template's turns included.
          add_prefix: read each text as a prompt (`prompt_ids`); False: the text's ids alone.

        Returns:
          PromptBatch; a prompt longer than `max_len` keeps its prefix or turns and its last
          tokens.
        """
        if max_len < 1:
            raise ValueError(f"max_len={max_len} leaves no room for a prompt.")
        tokens = np.full((len(texts), max_len), self.pad_id, np.int32)
        mask = np.zeros((len(texts), max_len), bool)
        truncated = 0
        for row, text in enumerate(texts):
            if add_prefix:
                ids, cut = self.prompt_ids(text, max_len)
            else:
                body = self.encode(text)
                ids, cut = body[max(0, len(body) - max_len) :], len(body) > max_len
            truncated += cut
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
