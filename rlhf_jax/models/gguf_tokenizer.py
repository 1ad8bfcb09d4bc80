"""The tokenizer stored in a GGUF file -> a transformers fast tokenizer, without torch.

GGUF keeps a byte-level BPE tokenizer ("tokenizer.ggml.model" = "gpt2") as its vocabulary, merges
and token types, and its pre-tokenizer only as a tag ("tokenizer.ggml.pre"); the regular
expressions behind each tag live in llama.cpp. The tags read here, with the splits llama.cpp
applies for them:

  gpt2, default                           GPT-2's regular expression
  smollm, starcoder, refact, codeshell    every digit on its own, then GPT-2's expression

Control tokens (type 3, e.g. "<|im_start|>") become special tokens, user-defined ones (type 4)
added tokens; the chat template ("tokenizer.chat_template") and BOS/EOS/UNK/pad come along.
transformers' own GGUF tokenizer does not know the "smollm" tag: it splits numerals after a run
of spaces ("  42" -> "Ġ", "Ġ", "4", "2" instead of "ĠĠ", "4", "2") and non-ASCII numerals (½, ²)
differently. This reader follows llama.cpp, as the model was trained.
"""

from __future__ import annotations

import os

# llama.cpp's "tokenizer.ggml.pre" tags -> whether digits are split one by one before GPT-2's
# regular expression.
_PRE_TOKENIZER_DIGITS = {
    "gpt2": False,
    "default": False,
    "smollm": True,
    "starcoder": True,
    "refact": True,
    "codeshell": True,
}
_CONTROL, _USER_DEFINED = 3, 4  # GGUF token types


def _pre_tokenizer(tag: str, path):
    from tokenizers import pre_tokenizers

    if tag not in _PRE_TOKENIZER_DIGITS:
        raise ValueError(
            f"{path}: GGUF pre-tokenizer {tag!r} is not supported; supported: "
            f"{', '.join(sorted(_PRE_TOKENIZER_DIGITS))}."
        )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if not _PRE_TOKENIZER_DIGITS[tag]:
        return byte_level
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])


def tokenizer_from_reader(reader, path: str | os.PathLike = ""):
    """A `transformers.PreTrainedTokenizerFast` from an open `gguf.GGUFReader`.

    Raises:
      ValueError naming the file for a tokenizer model other than byte-level BPE ("gpt2"), an
      unknown pre-tokenizer tag, or a file without a tokenizer.
    """
    import tokenizers
    import transformers
    from tokenizers import decoders, models, processors

    from rlhf_jax.models.gguf import field

    kind = field(reader, "tokenizer.ggml.model")
    if kind is None:
        raise ValueError(f"{path}: the GGUF file holds no tokenizer.")
    if kind != "gpt2":
        raise ValueError(
            f"{path}: GGUF tokenizer model {kind!r} is not supported; only byte-level BPE ('gpt2')."
        )
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
    merges = [tuple(merge.split(" ", 1)) for merge in field(reader, "tokenizer.ggml.merges", [])]
    bpe = models.BPE(vocab={token: i for i, token in enumerate(tokens)}, merges=merges)
    tokenizer = tokenizers.Tokenizer(bpe)
    tokenizer.pre_tokenizer = _pre_tokenizer(field(reader, "tokenizer.ggml.pre", "default"), path)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    if field(reader, "tokenizer.ggml.add_bos_token", False):  # e.g. Llama 3: BOS before the text
        bos_id = int(field(reader, "tokenizer.ggml.bos_token_id"))
        bos = tokens[bos_id]
        tokenizer.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
                ),
            ]
        )
    by_type = lambda wanted: [t for t, k in zip(tokens, types, strict=True) if k == wanted]  # noqa: E731
    tokenizer.add_special_tokens(
        [tokenizers.AddedToken(t, special=True, normalized=False) for t in by_type(_CONTROL)]
    )
    tokenizer.add_tokens(
        [tokenizers.AddedToken(t, special=False, normalized=False) for t in by_type(_USER_DEFINED)]
    )

    def token(key: str) -> str | None:
        index = field(reader, f"tokenizer.ggml.{key}")
        return None if index is None else tokens[int(index)]

    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=token("bos_token_id"),
        eos_token=token("eos_token_id"),
        unk_token=token("unknown_token_id"),
        pad_token=token("padding_token_id"),
        chat_template=field(reader, "tokenizer.chat_template"),
    )
