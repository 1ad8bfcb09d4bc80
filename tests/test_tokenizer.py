"""Tokenizer wrapper: special tokens never parsed from user text, left padding, truncation."""

from pathlib import Path

import numpy as np
import pytest

from rlhf_jax.data import Tokenizer, train_bpe_tokenizer

SHARED_GPT2 = Path(__file__).resolve().parents[2] / "shared" / "models" / "gpt2-tokenizer"
CORPUS = ["the quick brown fox jumps over the lazy dog"] * 20 + ["hello world, hello there"] * 20


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(CORPUS, vocab_size=300)


def test_literal_eos_string_is_ordinary_text(tok):
    ids = tok.encode("please stop <|endoftext|> here")
    assert tok.eos_id not in ids
    assert tok.decode(ids) == "please stop <|endoftext|> here"
    batch = tok.encode_prompts(["say <|endoftext|>"], max_len=32)
    assert tok.eos_id not in batch.tokens_bp[batch.mask_bp]


def test_prompts_are_left_padded_and_truncated_from_the_left(tok):
    long = "the quick brown fox jumps over the lazy dog " * 5
    batch = tok.encode_prompts(["hello", long], max_len=10)
    assert batch.tokens_bp.shape == (2, 10) and batch.tokens_bp.dtype == np.int32
    row0 = batch.mask_bp[0]
    assert not row0[0] and row0[-1] and (np.diff(row0.astype(int)) >= 0).all()
    assert (batch.tokens_bp[0][~row0] == tok.pad_id).all()
    assert batch.mask_bp[1].all() and batch.num_truncated == 1
    assert list(batch.tokens_bp[1]) == tok.encode(long)[-10:]


def test_prefix_tokens_are_kept_when_truncating():
    import transformers

    base = train_bpe_tokenizer(CORPUS, vocab_size=300)
    hf = base.hf
    hf.add_special_tokens({"bos_token": "<s>"})
    hf._tokenizer.post_processor = __import__("tokenizers").processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", hf.bos_token_id)]
    )
    tok = Tokenizer(
        transformers.PreTrainedTokenizerFast(
            tokenizer_object=hf._tokenizer, bos_token="<s>", eos_token="<|endoftext|>"
        )
    )
    assert tok.prefix_ids == (tok.hf.bos_token_id,)
    batch = tok.encode_prompts(["the quick brown fox jumps over the lazy dog"], max_len=5)
    assert batch.tokens_bp[0, 0] == tok.hf.bos_token_id and batch.num_truncated == 1
    assert tok.hf.bos_token_id not in tok.encode("<s> is text here")


def test_missing_eos_is_a_clear_error(tok):
    import transformers

    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.hf._tokenizer)
    with pytest.raises(ValueError, match="no EOS token"):
        Tokenizer(hf)


def test_save_and_reload_through_auto_tokenizer(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = Tokenizer.from_pretrained(tmp_path)
    assert again.eos_id == tok.eos_id
    assert again.encode("hello world") == tok.encode("hello world")


@pytest.mark.skipif(
    not SHARED_GPT2.exists(),
    reason="../shared/models/gpt2-tokenizer is absent "
    "(a fresh clone without the shared folder); the trained tokenizer tests cover it",
)
def test_real_gpt2_tokenizer_from_shared_folder():
    tok = Tokenizer.from_file(SHARED_GPT2 / "tokenizer.json", eos_token="<|endoftext|>")
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.eos_id == 50256
    assert 50256 not in tok.encode("Hello<|endoftext|>world")
    assert tok.encode_prompts(["Hello world"], 4).tokens_bp.tolist() == [[50256, 50256, 15496, 995]]
