"""SFT and reward-model steps: label masking, accumulation, one pass per response, sharding."""

import dataclasses
import itertools
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import losses, sharding
from rlhf_jax.models import CausalLM, ScalarModel, TransformerConfig
from rlhf_jax.training import optim, reward, steps
from rlhf_jax.training import state as state_lib

T, V = 12, 40


def tiny_config(**kw):
    return TransformerConfig.gpt2(
        vocab_size=V, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32, max_len=T, **kw
    )


def sft_batch(seed=0, batch=8):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, V, (batch, T)).astype(np.int32)
    lengths = rng.integers(6, T + 1, batch)
    prompt = rng.integers(2, 5, batch)
    cols = np.arange(T)
    mask = cols[None] < lengths[:, None]
    loss_mask = mask & (cols[None] >= prompt[:, None])
    tokens = np.where(mask, tokens, 0)
    return {"tokens_bt": tokens, "mask_bt": mask, "loss_mask_bt": loss_mask}


def rm_batch(seed=0, batch=8, k=4):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, V, (batch, k, T)).astype(np.int32)
    lengths = rng.integers(4, T + 1, (batch, k))
    valid = np.ones((batch, k), bool)
    valid[::3, -1] = False  # some prompts have K = 3
    mask = (np.arange(T)[None, None] < lengths[..., None]) & valid[..., None]
    ranks = rng.integers(0, 3, (batch, k))
    prefers = np.asarray(losses.preferences_from_ranking(jnp.asarray(ranks), jnp.asarray(valid)))
    return {"tokens_bkt": tokens, "mask_bkt": mask, "prefers_bkk": prefers, "valid_bk": valid}


class _NumberTokenizer:
    """Text of space-separated ids -> those ids (what the comparison layouts need of one)."""

    prefix_ids, eos_id, pad_id = (1,), 2, 0

    def encode(self, text):
        return [int(word) for word in text.split()]

    def prompt_ids(self, text, max_len=None):  # `Tokenizer.prompt_ids` without a chat template
        ids = list(self.prefix_ids) + self.encode(text)
        if max_len is None or len(ids) <= max_len:
            return ids, False
        return list(self.prefix_ids) + ids[len(ids) - max_len + len(self.prefix_ids) :], True


def rm_packed_batches(count=3, rows=8, row_len=2 * T):
    """`count` batches of `rows` rows, each packing whole comparisons (`TokenizeComparisonRow`)."""
    from rlhf_jax.data import packing, pipeline

    rng = np.random.default_rng(7)
    records = []
    for _ in range(count * rows * 3):
        k = int(rng.integers(2, 5))
        words = lambda n: " ".join(map(str, rng.integers(3, V, n)))  # noqa: E731
        records.append(
            {
                "prompt": words(int(rng.integers(2, 5))),
                "responses": [words(int(rng.integers(1, 4))) for _ in range(k)],
                "pairs": [[i, j] for i in range(k) for j in range(i + 1, k) if rng.random() < 0.8],
            }
        )
    tokenizer = _NumberTokenizer()
    spec = pipeline.SequenceSpec(max_len=T, max_prompt_len=6, max_responses=4)
    packed = packing.pack_comparisons(records, tokenizer, spec, row_len, per_row=3, seed=0)
    transform = pipeline.TokenizeComparisonRow(tokenizer, spec, row_len, per_row=3)
    dataset = pipeline.make_dataset(packed, transform, batch_size=rows, seed=0)
    batches = [dataset[i] for i in range(count)]
    assert all(b["valid_bek"].any(axis=2).sum() > rows for b in batches)  # > 1 per row
    return batches


def sft_packed_batches(count=3, rows=8, row_len=2 * T):
    """`count` batches of `rows` rows, each packing whole demonstrations
    (`TokenizeDemonstrationRow`)."""
    from rlhf_jax.data import packing, pipeline

    rng = np.random.default_rng(5)
    words = lambda n: " ".join(map(str, rng.integers(3, V, n)))  # noqa: E731
    records = [
        {"prompt": words(int(rng.integers(0, 4))), "response": words(int(rng.integers(1, 8)))}
        for _ in range(count * rows * 3)
    ]
    tokenizer, spec = _NumberTokenizer(), pipeline.SequenceSpec(max_len=T, max_prompt_len=6)
    packed = packing.pack_demonstrations(records, tokenizer, spec, row_len, per_row=4, seed=0)
    transform = pipeline.TokenizeDemonstrationRow(tokenizer, spec, row_len, per_row=4)
    dataset = pipeline.make_dataset(packed, transform, batch_size=rows, seed=0)
    batches = [dataset[i] for i in range(count)]
    assert all(b["documents_bt"].max(axis=1).sum() > rows for b in batches)  # > 1 per row
    return batches


def make_sft(config=None, grad_accum=1, loss_fn=losses.sft_loss):
    model = CausalLM(config or tiny_config())
    params, specs = state_lib.init_variables(model, T, seed=0)
    tx = optim.make_optimizer(learning_rate=1e-2, warmup_steps=2, total_steps=10, weight_decay=0.1)
    step = steps.make_train_step(steps.sft_forward(model, loss_fn), tx, grad_accum=grad_accum)
    return model, params, specs, tx, step


def make_rm(config=None):
    model = ScalarModel(config or tiny_config())
    params, specs = state_lib.init_variables(model, T, seed=1)
    tx = optim.make_optimizer(learning_rate=1e-2, warmup_steps=2, total_steps=10)
    step = steps.make_train_step(steps.reward_forward(model), tx)
    return model, params, specs, tx, step


def test_sft_loss_ignores_prompt_and_padding_labels():
    model, params, _, _, _ = make_sft()
    batch = sft_batch()
    forward = steps.sft_forward(model)

    @jax.jit
    def loss_and_grads(tokens_as_labels):
        def loss_of_logits(logits):
            loss, _ = losses.sft_loss(
                logits_btv=logits, tokens_bt=tokens_as_labels, loss_mask_bt=batch["loss_mask_bt"]
            )
            return loss

        logits = model.apply(params, batch["tokens_bt"], batch["mask_bt"]).logits_btv
        return jax.value_and_grad(loss_of_logits)(logits)

    # Labels (not inputs) perturbed at every non-target position: same loss, same gradient.
    perturbed = np.where(batch["loss_mask_bt"], batch["tokens_bt"], (batch["tokens_bt"] + 7) % V)
    loss_a, grad_a = loss_and_grads(batch["tokens_bt"])
    loss_b, grad_b = loss_and_grads(perturbed)
    np.testing.assert_allclose(loss_a, loss_b, rtol=0, atol=0)
    np.testing.assert_allclose(grad_a, grad_b, rtol=0, atol=0)
    # Perturbing a target label does change the gradient (the check can fail).
    target = np.where(batch["loss_mask_bt"], (batch["tokens_bt"] + 7) % V, batch["tokens_bt"])
    assert not np.allclose(loss_and_grads(target)[1], grad_a, atol=1e-4)

    # Through the whole model: padding tokens (inputs and labels) change nothing.
    @jax.jit
    def param_grads(b):
        return jax.grad(lambda p: forward(p, b, jax.random.key(0), True)[0])(params)

    padded = dict(batch, tokens_bt=np.where(batch["mask_bt"], batch["tokens_bt"], 13))
    chex.assert_trees_all_close(param_grads(batch), param_grads(padded), atol=1e-7)


def test_grad_accumulation_equals_full_batch():
    _, params, _, tx, step1 = make_sft()
    _, _, _, _, step4 = make_sft(grad_accum=4)
    batch = sft_batch(batch=8)  # micro-batches have different numbers of target tokens
    s1 = state_lib.create_state(params, tx, seed=0)
    s4 = state_lib.create_state(params, tx, seed=0)
    det = tiny_config()  # dropout 0: accumulation is exact
    assert det.dropout_rate == 0.0
    s1, m1 = jax.jit(step1)(s1, batch, jax.random.key(3))
    s4, m4 = jax.jit(step4)(s4, batch, jax.random.key(3))
    chex.assert_trees_all_close(s1.params, s4.params, atol=1e-6)
    np.testing.assert_allclose(m1["loss"][0], m4["loss"][0], rtol=1e-5)
    np.testing.assert_allclose(m1["loss"][1], m4["loss"][1])


def test_dropout_is_used_in_training_only():
    model, params, _, tx, step = make_sft(config=tiny_config(dropout_rate=0.2))
    batch = sft_batch()
    forward = steps.sft_forward(model)
    train_a = forward(params, batch, jax.random.key(0), False)[0]
    train_b = forward(params, batch, jax.random.key(1), False)[0]
    eval_a = forward(params, batch, jax.random.key(0), True)[0]
    eval_b = forward(params, batch, jax.random.key(1), True)[0]
    assert float(train_a) != float(train_b)
    assert float(eval_a) == float(eval_b)


def test_user_loss_is_one_argument_away():
    def doubled_nll(*, logits_btv, tokens_bt, loss_mask_bt):
        loss, metrics = losses.sft_loss(
            logits_btv=logits_btv, tokens_bt=tokens_bt, loss_mask_bt=loss_mask_bt
        )
        total, count = metrics["loss"]
        return 2.0 * loss, {**metrics, "loss": (2.0 * total, count)}

    _, params, _, tx, step = make_sft(loss_fn=doubled_nll)
    _, _, _, _, plain = make_sft()
    batch = sft_batch()
    _, m = jax.jit(step)(state_lib.create_state(params, tx, 0), batch, jax.random.key(0))
    _, m_plain = jax.jit(plain)(state_lib.create_state(params, tx, 0), batch, jax.random.key(0))
    np.testing.assert_allclose(m["loss"][0], 2.0 * m_plain["loss"][0], rtol=1e-6)
    np.testing.assert_allclose(m["grad_norm"][0], 2.0 * m_plain["grad_norm"][0], rtol=1e-5)


def test_reward_step_scores_each_response_once():
    config = tiny_config()
    calls = []

    class Recording(ScalarModel):
        def __call__(self, tokens_bt, *args, **kwargs):
            calls.append(tokens_bt.shape)
            return super().__call__(tokens_bt, *args, **kwargs)

    model = Recording(config)
    params, _ = state_lib.init_variables(model, T, seed=0)
    tx = optim.make_optimizer(learning_rate=1e-3, warmup_steps=1, total_steps=5)
    step = steps.make_train_step(steps.reward_forward(model), tx)
    batch = rm_batch(batch=8, k=4)
    calls.clear()
    state, metrics = jax.jit(step)(state_lib.create_state(params, tx, 0), batch, jax.random.key(0))
    assert calls == [(8 * 4, T)]  # one model call, every response of every prompt once
    pairs = int(np.sum(batch["prefers_bkk"]))
    assert float(metrics["accuracy"][1]) == pairs
    assert float(metrics["loss"][1]) == int(np.sum(np.any(batch["prefers_bkk"], axis=(1, 2))))


def test_reward_scores_match_manual_last_token():
    model, params, _, _, _ = make_rm()
    batch = rm_batch(batch=2, k=3)
    scores = steps.reward_scores(model, params, batch["tokens_bkt"], batch["mask_bkt"])
    chex.assert_shape(scores, (2, 3))
    for b in range(2):
        for k in range(3):
            if not batch["mask_bkt"][b, k].any():
                continue
            n = int(batch["mask_bkt"][b, k].sum())
            alone = model.apply(params, batch["tokens_bkt"][b, k, None, :n]).scores_bt[0, -1]
            np.testing.assert_allclose(scores[b, k], alone, atol=1e-5)


def test_nonfinite_loss_skips_the_update():
    def nan_loss(**kwargs):
        loss, metrics = losses.sft_loss(**kwargs)
        return loss * jnp.nan, {
            **metrics,
            "loss": (metrics["loss"][0] * jnp.nan, metrics["loss"][1]),
        }

    _, params, _, tx, step = make_sft(loss_fn=nan_loss)
    state = state_lib.create_state(params, tx, seed=0)
    new_state, metrics = jax.jit(step)(state, sft_batch(), jax.random.key(0))
    assert float(metrics["nonfinite"][0]) == 1.0
    chex.assert_trees_all_equal(new_state.params, params)
    assert int(new_state.step) == 1


def test_loop_stops_on_nan_losses_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    """A window of steps with non-finite losses beyond `max_nonfinite` stops the run with
    NonFiniteLossError; the checkpoint before them holds the good state (nothing is lost)."""
    import grain

    from rlhf_jax.training.checkpoint import Checkpointer, abstract_like
    from rlhf_jax.training.loop import LoopConfig, NonFiniteLossError, train_loop
    from rlhf_jax.training.metrics_writer import MetricWriter

    def loss_nan_on_flagged_batches(**kwargs):
        # sft_loss ignores column 0 of the loss mask; a batch flags itself there.
        flagged = jnp.any(kwargs["loss_mask_bt"][:, 0])
        loss, metrics = losses.sft_loss(**kwargs)
        scale = jnp.where(flagged, jnp.nan, 1.0)
        return loss * scale, {**metrics, "loss": (metrics["loss"][0] * scale, metrics["loss"][1])}

    _, params, _, tx, step = make_sft(loss_fn=loss_nan_on_flagged_batches)
    batches = []
    for i in range(6):
        batch = sft_batch(seed=i)
        batch["loss_mask_bt"][:, 0] = i >= 2  # steps 3.. have NaN losses
        batch["truncated_b"] = batch["skipped_b"] = np.zeros(8, np.int32)
        batches.append(batch)
    state = state_lib.create_state(params, tx, seed=0)
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    config = LoopConfig(num_steps=6, log_every=2, checkpoint_every=2, max_nonfinite=1)
    with pytest.raises(NonFiniteLossError, match="2 steps of the window up to step 4 had a NaN"):
        train_loop(
            state=state,
            train_step=jax.jit(step),
            train_iter=iter(grain.MapDataset.source(batches).to_iter_dataset()),
            place_batch=lambda b: b,
            config=config,
            checkpointer=checkpointer,
            writer=MetricWriter(tmp_path),
        )
    assert checkpointer.latest_step() == 2
    good = state
    for batch in batches[:2]:
        good, _ = jax.jit(step)(good, batch, state_lib.step_rng(good))
    shardings = jax.tree_util.tree_map(lambda x: x.sharding, good)
    restored, _ = checkpointer.restore(abstract_like(good, shardings), None)
    checkpointer.close()
    assert int(restored.step) == 2
    chex.assert_trees_all_close(restored.params, good.params, atol=1e-6)


def test_reward_bias_normalisation():
    model, params, _, _, _ = make_rm()
    batch = sft_batch()
    score = jax.jit(reward.make_demonstration_scorer(model))
    mean = reward.mean_reference_reward(score, params, [batch])
    shifted = reward.shift_reward_bias(params, mean)
    assert abs(reward.mean_reference_reward(score, shifted, [batch])) < 1e-5
    assert abs(mean) > 1e-4  # the check is not vacuous


def test_reward_params_from_lm_keep_the_decoder():
    lm = CausalLM(tiny_config())
    lm_params, _ = state_lib.init_variables(lm, T, seed=5)
    _, rm_params, _, _, _ = make_rm()
    merged = reward.reward_params_from_lm(lm_params, rm_params)
    chex.assert_trees_all_equal(merged["params"]["decoder"], lm_params["params"]["decoder"])
    chex.assert_trees_all_equal(merged["params"]["head"], rm_params["params"]["head"])
    chex.assert_trees_all_equal_structs(merged, rm_params)


def _run_steps(make, batches, mesh):
    model, params, specs, tx, step = make()
    state = state_lib.create_state(params, tx, seed=0)
    if mesh is not None:
        param_shardings = sharding.logical_shardings(specs, mesh, shapes=params)
        shardings = state_lib.state_shardings(param_shardings, tx, params, mesh)
        state = sharding.put_on_mesh(state, shardings)
        jitted = steps.jit_train_step(step, mesh, shardings)
        batches = [sharding.put_batch(b, mesh) for b in batches]
    else:
        jitted = jax.jit(step)
    history = []
    for b in batches:
        state, metrics = jitted(state, b, state_lib.step_rng(state))
        history.append(float(metrics["loss"][0]))
    return jax.device_get(state), history


@pytest.mark.parametrize("kind", ["sft", "sft_packed_rows", "rm", "rm_packed_rows"])
def test_sharded_steps_equal_single_device(kind):
    config = tiny_config(dropout_rate=0.1)  # dropout masks must agree across layouts too
    if kind.startswith("sft"):
        make = lambda: make_sft(config=config, grad_accum=2)  # noqa: E731
        if kind == "sft":
            batches = [sft_batch(seed=s) for s in range(3)]
        else:  # several demonstrations per row, each attending to itself
            batches = sft_packed_batches()
    else:
        # Llama family: no norm or key biases. Those have zero true gradient under a loss that sees
        # only reward differences (or softmax-shift invariance), so Adam turns round-off in them
        # into O(lr) updates that legitimately differ between reduction orders.
        llama = TransformerConfig.llama(
            vocab_size=V,
            num_layers=2,
            num_heads=2,
            num_kv_heads=2,
            embed_dim=16,
            mlp_dim=32,
            max_len=T,
            dropout_rate=0.1,
        )
        make = lambda: make_rm(config=llama)  # noqa: E731
        if kind == "rm":
            batches = [rm_batch(seed=s) for s in range(3)]
        else:  # several comparisons per row: per-row slots, gathered on the sharded rows
            batches = rm_packed_batches()
    single, single_losses = _run_steps(make, batches, None)
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    sharded, sharded_losses = _run_steps(make, batches, mesh)
    np.testing.assert_allclose(sharded_losses, single_losses, rtol=1e-5)
    chex.assert_trees_all_close(sharded.params, single.params, atol=1e-5)
    chex.assert_trees_all_close(sharded.opt_state, single.opt_state, atol=1e-5)
    assert int(sharded.step) == 3
    # The runs moved the params (the comparison is not between two untouched inits).
    _, init, _, _, _ = make()
    assert not np.allclose(
        single.params["params"]["decoder"]["layer_0"]["mlp"]["up"]["kernel"],
        init["params"]["decoder"]["layer_0"]["mlp"]["up"]["kernel"],
    )


def _small_model(family, vocab_size, seed, module=ScalarModel):
    """(module, params): 2 layers x 16 over 64 positions, for a tokenizer's vocabulary, of the
    "gpt2" or "llama" family, or "mistral" (Llama with a 4-token sliding window)."""
    make = getattr(TransformerConfig, "llama" if family == "mistral" else family)
    extra = {"num_kv_heads": 2} if family != "gpt2" else {}
    if family == "mistral":
        extra["sliding_window"] = 4
    config = make(
        vocab_size=vocab_size,
        num_layers=2,
        num_heads=2,
        embed_dim=16,
        mlp_dim=32,
        max_len=64,
        **extra,
    )
    model = module(config)
    return model, state_lib.init_variables(model, 64, seed=seed)[0]


@pytest.mark.parametrize("family", ["gpt2", "llama", "mistral"])
def test_shared_prompt_rows_score_and_train_exactly_like_one_response_per_row(family):
    """The prompt once, then every response (segment-masked, positions continued from the
    prompt) gives the same rewards, loss and gradients as one padded row per response; so do
    several such comparisons packed in one row; with a sliding window (Mistral) too, which must
    count positions, not row slots."""
    from rlhf_jax.data import pipeline
    from rlhf_jax.data.tokenizer import train_bpe_tokenizer

    corpus = [f"Sort {i} {i + 3} then answer {i * 7}." for i in range(60)]
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=200)
    model, params = _small_model(family, tokenizer.vocab_size, seed=3)
    spec = pipeline.SequenceSpec(max_len=24, max_prompt_len=16, max_responses=4)
    records = [
        {
            "prompt": "Sort 3 6 then",
            "responses": [" answer 21.", " 6 3", " no"],
            "pairs": [[0, 1], [0, 2], [1, 2]],
        },
        {
            "prompt": "Sort 10 13 then answer",
            "responses": [" 70.", " 13 10 70 70 70", " 10", " 7"],
            "pairs": [[0, 1], [2, 3], [0, 3]],
        },
    ]

    def batch_of(transform):
        dataset = pipeline.make_dataset(records, transform, batch_size=2, seed=0, shuffle=False)
        return dataset[0]

    rows = batch_of(pipeline.TokenizeComparison(tokenizer, spec))
    packed = batch_of(pipeline.TokenizeComparisonSharedPrompt(tokenizer, spec, row_len=48))
    assert packed["tokens_bt"].shape == (2, 48)  # against 2 x 4 rows of 24 tokens
    np.testing.assert_array_equal(rows["valid_bk"], packed["valid_bk"])

    expected = steps.reward_scores(model, params, rows["tokens_bkt"], rows["mask_bkt"])
    got = steps.shared_prompt_reward_scores(model, params, packed)
    valid = rows["valid_bk"]
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(expected)[valid], atol=1e-5)

    forward = steps.reward_forward(model)
    loss_and_grad = jax.jit(jax.value_and_grad(lambda p, batch: forward(p, batch, None, True)[0]))
    loss = lambda batch: loss_and_grad(params, batch)[0]  # noqa: E731
    grad = lambda batch: loss_and_grad(params, batch)[1]  # noqa: E731
    np.testing.assert_allclose(loss(packed), loss(rows), rtol=1e-5)
    chex.assert_trees_all_close(grad(packed), grad(rows), atol=1e-5)

    # Both comparisons in one row (each attending only to itself), a third slot left empty.
    both = pipeline.make_dataset(
        [records],
        pipeline.TokenizeComparisonRow(tokenizer, spec, row_len=80, per_row=3),
        batch_size=1,
        seed=0,
        shuffle=False,
    )[0]
    assert both["tokens_bt"].shape == (1, 80) and set(both["documents_bt"][0]) == {-1, 0, 1}
    got = steps.comparison_scores(model, params, both)
    chex.assert_shape(got, (3, 4))
    np.testing.assert_allclose(np.asarray(got)[:2][valid], np.asarray(expected)[valid], atol=1e-5)
    np.testing.assert_allclose(loss(both), loss(rows), rtol=1e-5)
    chex.assert_trees_all_close(grad(both), grad(rows), atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama", "mistral"])
def test_packed_demonstrations_train_exactly_like_one_row_each(family):
    """Whole demonstrations packed several to a row (each attending to itself, positions
    restarting) give the loss, token counts and gradients of one padded row per demonstration,
    for response-only targets and for every-token (pretraining) targets; with a sliding window
    (Mistral) too."""
    from rlhf_jax.data import packing, pipeline
    from rlhf_jax.data.tokenizer import train_bpe_tokenizer

    corpus = [f"Sort {i} {i + 3} then answer {i * 7}." for i in range(60)]
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=200)
    model, params = _small_model(family, tokenizer.vocab_size, seed=2, module=CausalLM)
    spec = pipeline.SequenceSpec(max_len=24, max_prompt_len=12)
    rng = np.random.default_rng(0)
    records = [
        {
            "prompt": "" if i % 4 == 0 else f"Sort {i} {i + 3} then",
            "response": " answer" + f" {i * 7}" * int(rng.integers(1, 9)),  # some cut at 24
        }
        for i in range(12)
    ]
    forward = steps.sft_forward(model)
    loss_and_grad = jax.jit(
        jax.value_and_grad(lambda p, batch: forward(p, batch, None, True), has_aux=True)
    )
    for loss_on_prompt in (False, True):
        packed = packing.pack_demonstrations(
            records, tokenizer, spec, 64, per_row=4, seed=0, loss_on_prompt=loss_on_prompt
        )
        assert len(packed) <= 6
        rows = pipeline.make_dataset(
            packed,
            pipeline.TokenizeDemonstrationRow(tokenizer, spec, 64, 4, loss_on_prompt),
            batch_size=len(packed),
            seed=0,
            shuffle=False,
        )[0]
        one_each = pipeline.make_dataset(
            records,
            pipeline.TokenizeDemonstration(tokenizer, spec, loss_on_prompt),
            batch_size=len(records),
            seed=0,
            shuffle=False,
        )[0]
        assert rows["truncated_b"].sum() == one_each["truncated_b"].sum() > 0
        (loss_rows, metrics_rows), grad_rows = loss_and_grad(params, rows)
        (loss_each, metrics_each), grad_each = loss_and_grad(params, one_each)
        assert float(metrics_rows["nll"][1]) == float(metrics_each["nll"][1])  # target tokens
        np.testing.assert_allclose(loss_rows, loss_each, rtol=1e-5)
        np.testing.assert_allclose(metrics_rows["accuracy"], metrics_each["accuracy"], rtol=1e-5)
        chex.assert_trees_all_close(grad_rows, grad_each, atol=1e-5)
    # Without the document mask the packed rows see each other: the check can fail.
    unmasked = {k: v for k, v in rows.items() if k != "documents_bt"}
    grad_unmasked = loss_and_grad(params, unmasked)[1]
    gap = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), grad_unmasked, grad_each)
    assert max(jax.tree.leaves(gap)) > 1e-3  # (the parity above holds to 1e-5)


def test_shared_prompt_rows_cut_responses_to_one_length_skip_or_raise_when_they_do_not_fit():
    from rlhf_jax.data import pipeline, records
    from rlhf_jax.data.tokenizer import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(["one two three four five six seven"] * 10, vocab_size=120)
    record = {
        "prompt": "one two",
        "responses": [" three four five six seven", " six"],
        "pairs": [[1, 0]],
    }
    prompt_len = len(tokenizer.encode("one two"))
    lengths = [len(tokenizer.encode(r)) + 1 for r in record["responses"]]  # + EOS
    row_len = prompt_len + lengths[1] + 2  # room for the short response and 2 tokens of the long
    cut = max(c for c in range(1, 20) if sum(min(n, c) for n in lengths) <= row_len - prompt_len)
    spec = pipeline.SequenceSpec(max_len=48, max_prompt_len=16, max_responses=2)
    element = pipeline.TokenizeComparisonSharedPrompt(tokenizer, spec, row_len).map(record)
    segments = element["segments_t"]
    assert element["truncated"] == 1 and element["skipped"] == 0
    assert [(segments == k).sum() for k in (1, 2)] == [min(n, cut) for n in lengths]
    assert element["prefers_kk"][1, 0] and element["valid_k"].all()
    skip = dataclasses.replace(spec, overlong="skip")
    skipped = pipeline.TokenizeComparisonSharedPrompt(tokenizer, skip, row_len).map(record)
    assert skipped["skipped"] == 1 and not skipped["mask_t"].any()
    assert not skipped["prefers_kk"].any()
    strict = dataclasses.replace(spec, overlong="error")
    with pytest.raises(records.RecordError, match=f"more than row_len={row_len}"):
        pipeline.TokenizeComparisonSharedPrompt(tokenizer, strict, row_len).map(record)


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(
    not SHARED.exists(), reason="../shared/data is absent (only this workspace ships it)"
)
def test_packed_hh_records_train_exactly_like_one_row_each():
    """Real comparisons (the shared HH-RLHF harmless-base file, many cut by max_len): packed
    several to a row, the reward model's loss and gradients equal one padded row per response;
    their chosen replies as demonstrations, packed several to a row, give SFT's loss and
    gradients of one padded row per demonstration."""
    from rlhf_jax.data import packing, pipeline, records
    from rlhf_jax.data.tokenizer import train_bpe_tokenizer

    path = SHARED / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
    comparisons = list(
        itertools.islice(records.read_records(path, records.parse_hh, skip_bad=True), 48)
    )
    texts = [c["prompt"] + r for c in comparisons for r in c["responses"]]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300)
    spec = pipeline.SequenceSpec(max_len=64, max_prompt_len=40, max_responses=2)

    def whole(source, transform):
        """All of `source` as one batch, in order."""
        return pipeline.make_dataset(
            source, transform, batch_size=len(source), seed=0, shuffle=False
        )[0]

    def assert_same_loss_and_gradients(forward, params, batch_a, batch_b):
        loss_and_grad = jax.jit(jax.value_and_grad(lambda p, b: forward(p, b, None, True)[0]))
        loss_a, grad_a = loss_and_grad(params, batch_a)
        loss_b, grad_b = loss_and_grad(params, batch_b)
        np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
        chex.assert_trees_all_close(grad_a, grad_b, atol=1e-5)

    model, params = _small_model("gpt2", tokenizer.vocab_size, seed=0)
    packed = packing.pack_comparisons(comparisons, tokenizer, spec, 256, per_row=4, seed=0)
    assert len(packed) < len(comparisons) / 1.5
    rows = whole(packed, pipeline.TokenizeComparisonRow(tokenizer, spec, 256, per_row=4))
    per_response = whole(
        [comparisons[i] for group in packed.groups for i in group],
        pipeline.TokenizeComparison(tokenizer, spec),
    )
    assert per_response["truncated_b"].sum() > 0 and rows["truncated_b"].sum() > 0
    assert_same_loss_and_gradients(steps.reward_forward(model), params, rows, per_response)

    demonstrations = packing.pack_demonstrations(comparisons, tokenizer, spec, 256, 6, seed=0)
    assert len(demonstrations) < len(comparisons) / 2
    demonstration_rows = whole(
        demonstrations, pipeline.TokenizeDemonstrationRow(tokenizer, spec, 256, per_row=6)
    )
    one_each = whole(comparisons, pipeline.TokenizeDemonstration(tokenizer, spec))
    assert demonstration_rows["truncated_b"].sum() == one_each["truncated_b"].sum() > 0
    lm, lm_params = _small_model("gpt2", tokenizer.vocab_size, seed=0, module=CausalLM)
    assert_same_loss_and_gradients(steps.sft_forward(lm), lm_params, demonstration_rows, one_each)
