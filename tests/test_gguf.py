"""GGUF import on small files written here with the `gguf` package, the way llama.cpp's converter
writes them (q/k rows permuted for Llama, not for Qwen2; tied embeddings without output.weight;
quantized matrices), checked against transformers' own GGUF loader; and the one-line errors for a
foreign architecture, an unsupported tensor type, a truncated file and a missing tokenizer."""

import json

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from rlhf_jax.data import train_bpe_tokenizer
from rlhf_jax.models import CausalLM, gguf_tokenizer, hf, hf_config
from rlhf_jax.models import gguf as gguf_lib
from rlhf_jax.training import state as state_lib

LLAMA = {
    "model_type": "llama",
    "vocab_size": 300,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
}
QWEN2 = {**LLAMA, "model_type": "qwen2", "tie_word_embeddings": False}


def llama_cpp_permute(rows: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf `LlamaModel.permute`, as its converter applies it."""
    half = rows.shape[0] // num_heads // 2
    return rows.reshape(num_heads, 2, half, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _gguf_name(hf_name: str) -> str:
    inverse = {v: k for k, v in gguf_lib._TOP_LEVEL.items()}
    if hf_name in inverse:
        return inverse[hf_name]
    _, _, layer, *rest = hf_name.split(".")
    module, kind = ".".join(rest[:-1]), rest[-1]
    part = {v: k for k, v in gguf_lib._IN_BLOCK.items()}[module]
    return f"blk.{layer}.{part}.{kind}"


def write_gguf(path, hf_fields: dict, tensors: dict, *, tokenizer=None, quantize=(), arch=None):
    """A GGUF file as llama.cpp writes one from a transformers checkpoint (`tensors` by their
    transformers names); `quantize` names the GGUF tensors stored as Q8_0."""
    arch = arch or hf_fields["model_type"]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(hf_fields["num_hidden_layers"])
    writer.add_context_length(hf_fields["max_position_embeddings"])
    writer.add_embedding_length(hf_fields["hidden_size"])
    writer.add_feed_forward_length(hf_fields["intermediate_size"])
    writer.add_head_count(hf_fields["num_attention_heads"])
    writer.add_head_count_kv(hf_fields["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(hf_fields["rms_norm_eps"])
    writer.add_rope_freq_base(hf_fields["rope_theta"])
    writer.add_vocab_size(hf_fields["vocab_size"])
    if tokenizer is not None:
        vocab = tokenizer.hf.get_vocab()
        tokens = sorted(vocab, key=vocab.get)
        model = json.loads(tokenizer.hf.backend_tokenizer.to_str())["model"]
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types([3 if t == "<|endoftext|>" else 1 for t in tokens])
        writer.add_token_merges(
            [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
        )
        writer.add_eos_token_id(tokenizer.eos_id)
        writer.add_bos_token_id(tokenizer.eos_id)
        writer.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    heads = {"attn_q": hf_fields["num_attention_heads"], "attn_k": hf_fields["num_key_value_heads"]}
    for hf_name, array in tensors.items():
        name = _gguf_name(hf_name)
        array = np.asarray(array, np.float32)
        part = name.split(".")[2] if name.startswith("blk.") else ""
        if arch == "llama" and part in heads:
            array = llama_cpp_permute(array, heads[part])
        if name in quantize:
            q8 = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(array, q8), raw_dtype=q8)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _random_checkpoint(fields: dict, seed: int = 0) -> tuple[dict, dict]:
    """(transformers tensors, our variables) of a randomly initialised model of `fields`."""
    config = hf_config.config_from_hf(fields)
    variables, _ = state_lib.init_variables(CausalLM(config), 8, seed)
    tensors = hf.params_to_hf(variables, config)
    rng = np.random.default_rng(seed)
    for name in tensors:  # non-trivial norms and biases, so a wrong mapping shows
        if name.endswith(("norm.weight", ".bias")):
            tensors[name] = rng.normal(1.0 if "norm" in name else 0.0, 0.1, tensors[name].shape)
    return tensors, hf.params_from_hf(tensors, config)


@pytest.mark.parametrize("fields", [LLAMA, QWEN2], ids=["llama", "qwen2"])
def test_gguf_matches_transformers_gguf_loader_and_the_original_weights(tmp_path, fields):
    """A Llama file (permuted q/k rows, tied, Q8_0 matrices) and a Qwen2 file (q/k/v biases, not
    permuted, untied): our logits equal transformers' GGUF-loaded model's and, for the float32
    tensors, the checkpoint's own."""
    tensors, variables = _random_checkpoint(fields)
    quantized = ("blk.1.ffn_down.weight", "blk.0.attn_q.weight")
    path = write_gguf(tmp_path / "m.gguf", fields, tensors, quantize=quantized)
    config, params = gguf_lib.load_gguf(path)
    assert config.tie_embeddings == fields["tie_word_embeddings"]
    assert config.num_kv_heads == fields["num_key_value_heads"]

    tokens_bt = np.random.default_rng(1).integers(0, fields["vocab_size"], (2, 12))
    ours = np.asarray(CausalLM(config).apply(params, jnp.asarray(tokens_bt)).logits_btv)
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file="m.gguf", dtype=torch.float32
    )
    with torch.no_grad():
        theirs = reference(torch.as_tensor(tokens_bt)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=1e-5)

    # Unquantized tensors come back exactly; the q/k rows in transformers' order.
    back = gguf_lib.transformers_tensors(gguf_lib.open_gguf(path), {**fields}, path)
    for name in ("model.layers.0.self_attn.k_proj.weight", "model.layers.1.mlp.up_proj.weight"):
        np.testing.assert_array_equal(back[name], np.asarray(tensors[name], np.float32))
    if fields["model_type"] == "qwen2":
        np.testing.assert_array_equal(
            back["model.layers.0.self_attn.q_proj.bias"],
            np.asarray(tensors["model.layers.0.self_attn.q_proj.bias"], np.float32),
        )
    # Without the quantization the logits are the original checkpoint's.
    exact = write_gguf(tmp_path / "exact.gguf", fields, tensors)
    config, params = gguf_lib.load_gguf(exact)
    original = CausalLM(config).apply(variables, jnp.asarray(tokens_bt)).logits_btv
    loaded = CausalLM(config).apply(params, jnp.asarray(tokens_bt)).logits_btv
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(original))


def test_unpermute_rows_inverts_llama_cpp_for_weights_and_biases():
    rng = np.random.default_rng(0)
    for heads, shape in ((4, (32, 5)), (3, (24,)), (1, (8, 2))):
        rows = rng.normal(size=shape)
        permuted = llama_cpp_permute(rows, heads)
        assert not np.array_equal(permuted, rows)
        np.testing.assert_array_equal(gguf_lib.unpermute_rows(permuted, heads), rows)


def test_the_gguf_tokenizer_equals_the_tokenizer_it_was_written_from(tmp_path):
    corpus = [
        "The quick brown fox 123 jumps",
        "over   the lazy dog.\n\tdone",
        "naïve café 日本",
    ] * 20
    original = train_bpe_tokenizer(corpus, vocab_size=300)
    tensors, _ = _random_checkpoint(LLAMA)
    path = write_gguf(tmp_path / "m.gguf", LLAMA, tensors, tokenizer=original)
    rebuilt = gguf_tokenizer.tokenizer_from_reader(gguf_lib.open_gguf(path), path)
    text = "Hello   world 42 <|endoftext|> naïve\n\n  code: x = f(3)  # 日本 🙂"
    assert rebuilt(text)["input_ids"] == original.hf(text)["input_ids"]
    assert rebuilt.eos_token == "<|endoftext|>" and rebuilt.chat_template.startswith("{% for")
    assert rebuilt.decode(rebuilt(text)["input_ids"]) == text


def test_bad_gguf_files_get_one_line_errors_naming_the_file(tmp_path):
    tensors, _ = _random_checkpoint(LLAMA)
    with pytest.raises(FileNotFoundError, match="nothing.gguf"):
        gguf_lib.load_gguf(tmp_path / "nothing.gguf")

    foreign = write_gguf(tmp_path / "falcon.gguf", LLAMA, tensors, arch="falcon")
    with pytest.raises(ValueError, match=r"falcon.gguf: GGUF architecture 'falcon' is not supp"):
        gguf_lib.load_gguf(foreign)

    whole = write_gguf(tmp_path / "whole.gguf", LLAMA, tensors).read_bytes()
    (tmp_path / "cut.gguf").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"cut.gguf: not a readable GGUF file"):
        gguf_lib.load_gguf(tmp_path / "cut.gguf")

    writer = gguf.GGUFWriter(str(tmp_path / "int.gguf"), "llama")
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(64, np.int32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reader = gguf_lib.open_gguf(tmp_path / "int.gguf")
    with pytest.raises(ValueError, match=r"int.gguf: tensor 'blk.0.attn_norm.weight' has type I32"):
        gguf_lib.transformers_tensors(reader, LLAMA, tmp_path / "int.gguf")

    with pytest.raises(ValueError, match=r"whole.gguf: the GGUF file holds no tokenizer"):
        gguf_tokenizer.tokenizer_from_reader(
            gguf_lib.open_gguf(tmp_path / "whole.gguf"), tmp_path / "whole.gguf"
        )
