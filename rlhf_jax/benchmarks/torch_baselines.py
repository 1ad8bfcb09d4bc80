"""The transformers/PyTorch baseline of every workload: the same models (rlhf_jax weights
exported to transformers directories), the same batches and the same computations, timed with
the same clock.

torch and transformers are imported inside the functions, never when this module is imported:
the library does not need them, and the benchmark runs without them (`torch_available`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from rlhf_jax.benchmarks import timing
from rlhf_jax.benchmarks.presets import CLIP_EPS, LAM, LEARNING_RATE, VALUE_CLIP, WEIGHT_DECAY


@dataclasses.dataclass(frozen=True)
class TorchSide:
    """Where the PyTorch baseline runs: `threads` intra-op threads (CPU) and `device` ("cpu" or
    "cuda"). On CUDA every timed call ends with a synchronize, so the wall clock holds the GPU
    work, and the peak allocated GPU memory of the timed calls is reported."""

    threads: int = 2
    device: str = "cpu"

    def tensor(self, array, dtype=None):
        """A torch copy of the numpy `array` on this side's device (`dtype`: a torch dtype, or
        None to keep the array's)."""
        import torch

        # a copy: inputs may be read-only
        return torch.tensor(array, dtype=dtype, device=self.device)

    def timed(self, fn: Callable[[], object], repeats: int) -> timing.Timings:
        """`timing.timed` of `fn`; on CUDA each call synchronizes and the peak allocated GPU
        memory of the timed calls is kept in `device_peak_mib`."""
        if self.device == "cpu":
            return timing.timed(fn, repeats)
        import torch

        def synced():
            out = fn()
            torch.cuda.synchronize()
            return out

        synced()
        torch.cuda.reset_peak_memory_stats()
        times = timing.timed(synced, repeats)
        times.device_peak_mib = torch.cuda.max_memory_allocated() / 2**20
        return times

    def versions(self) -> dict:
        """The baseline's settings and versions, recorded in every result's `torch` figures."""
        import torch
        import transformers

        return dict(
            threads=self.threads,
            device=self.device,
            version=torch.__version__,
            transformers=transformers.__version__,
        )


def resolve_torch_device(choice: str) -> str:
    """ "cpu" or "cuda" for --torch_device (auto: cuda when JAX runs on a GPU and torch sees one).

    Raises:
      ValueError: "cuda" asked for where torch sees no CUDA device.
    """
    import jax
    import torch

    if choice == "auto":
        return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--torch_device=cuda but torch sees no CUDA device.")
    return choice


def torch_available() -> bool:
    """Whether torch and transformers can be imported (the baseline runs only where they can)."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def make_torch_side(threads: int, device: str) -> TorchSide:
    """The baseline's `TorchSide`: torch set to `threads` intra-op threads, on the device
    --torch_device names (`device`: "auto", "cpu" or "cuda"; see `resolve_torch_device`)."""
    import torch

    torch.set_num_threads(threads)
    return TorchSide(threads=threads, device=resolve_torch_device(device))


@contextlib.contextmanager
def _torch_lm(cfg, params, side: TorchSide) -> Iterator[Any]:
    """A transformers causal LM with `params` (rlhf_jax CausalLM variables) on `side.device`, in
    eval mode."""
    import transformers

    from rlhf_jax.models import hf

    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp, cfg, params, bos_token_id=0, eos_token_id=0)
        yield transformers.AutoModelForCausalLM.from_pretrained(tmp).to(side.device).eval()


@contextlib.contextmanager
def _torch_scalar(cfg, params, side: TorchSide) -> Iterator[tuple[Any, Any]]:
    """(transformers base model, torch Linear head) holding a ScalarModel's variables."""
    import numpy as np
    import torch
    import transformers

    from rlhf_jax.models import hf

    decoder_only = {"params": {"decoder": params["params"]["decoder"]}}
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp, cfg, decoder_only, bos_token_id=0, eos_token_id=0)
        base = transformers.AutoModel.from_pretrained(tmp).to(side.device).eval()
    head = torch.nn.Linear(cfg.embed_dim, 1, device=side.device)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(np.asarray(params["params"]["head"]["kernel"]).T))
        head.bias.copy_(torch.from_numpy(np.asarray(params["params"]["head"]["bias"])))
    yield base, head


def _torch_response_logprobs(model, ids, prompt_len: int):
    """float32 [B, N] log-probs of the response tokens, and the logits that predicted them."""
    import torch

    logits = model(input_ids=ids).logits[:, prompt_len - 1 : -1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return torch.gather(logprobs, -1, ids[:, prompt_len:, None])[..., 0], logits


def _torch_values(base, head, ids, prompt_len: int):
    """float32 [B, N] values of a scalar model (`base`, `head`) at the positions that predict
    the response tokens."""
    hidden = base(input_ids=ids).last_hidden_state
    return head(hidden[:, prompt_len - 1 : -1])[..., 0]


@contextlib.contextmanager
def torch_sft_loss(cfg, params, tokens, loss_mask, side: TorchSide) -> Iterator[tuple[Any, list]]:
    """(loss(), trained parameters) of (a) in transformers/PyTorch: a causal LM holding `params`,
    its mean NLL on the tokens `loss_mask` marks (labels -100 elsewhere)."""
    import torch

    ids = side.tensor(tokens, torch.long)
    labels = ids.masked_fill(~side.tensor(loss_mask), -100)  # -100: no loss there
    with _torch_lm(cfg, params, side) as model:
        model.train()  # dropout is 0 in the config
        yield (lambda: model(input_ids=ids, labels=labels).loss), list(model.parameters())


@contextlib.contextmanager
def torch_pair_loss(cfg, params, tokens, side: TorchSide) -> Iterator[tuple[Any, list]]:
    """(loss(), trained parameters) of (b) in transformers/PyTorch: every response scored once,
    -log sigmoid(r_0 - r_1) averaged over the comparisons."""
    import torch

    pairs, _, seq = tokens.shape
    ids = side.tensor(tokens.reshape(2 * pairs, seq), torch.long)
    with _torch_scalar(cfg, params, side) as (base, head):
        base.train()  # dropout is 0 in the config
        head.bias.requires_grad_(False)  # as rlhf_jax: the bias is set after training

        def loss():
            rewards = head(base(input_ids=ids).last_hidden_state[:, -1])[:, 0].view(pairs, 2)
            return -torch.nn.functional.logsigmoid(rewards[:, 0] - rewards[:, 1]).mean()

        yield loss, [*base.parameters(), head.weight]


def _torch_train_step(loss_fn, parameters, repeats: int, side: TorchSide, work: float, unit: str):
    """(stats, losses of the first two steps) of `loss_fn` trained with AdamW: forward,
    `backward()`, `step()`, as a transformers training loop does."""
    import torch

    opt = torch.optim.AdamW(parameters, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)

    def run():
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    first_losses = [run() for _ in range(2)]
    stats = timing.summarize(side.timed(run, repeats), work, unit)
    return {**stats, **side.versions()}, first_losses


def torch_sft(cfg, params, tokens, loss_mask, repeats: int, side: TorchSide):
    """((a) stats, losses of the first two steps) for the same step in transformers/PyTorch."""
    with torch_sft_loss(cfg, params, tokens, loss_mask, side) as (loss_fn, trained):
        return _torch_train_step(loss_fn, trained, repeats, side, tokens.size, "tokens")


def torch_sft_lora(cfg, variables, tokens, loss_mask, repeats: int, side: TorchSide):
    """((f) stats, losses of the first two steps): the base in transformers with the same
    adapters loaded by peft (`lora.save_peft`), only they trained."""
    import tempfile

    import peft
    import torch

    from rlhf_jax.models import lora

    ids = side.tensor(tokens, torch.long)
    labels = ids.masked_fill(~side.tensor(loss_mask), -100)
    plain = cfg.replace(lora=None)
    base_params = {"params": variables["params"]}
    with tempfile.TemporaryDirectory() as tmp, _torch_lm(plain, base_params, side) as base:
        lora.save_peft(tmp, cfg, variables["lora"])
        model = peft.PeftModel.from_pretrained(base, tmp, is_trainable=True).to(side.device)
        model.train()
        trained = [p for p in model.parameters() if p.requires_grad]
        loss_fn = lambda: model(input_ids=ids, labels=labels).loss  # noqa: E731
        return _torch_train_step(loss_fn, trained, repeats, side, tokens.size, "tokens")


def torch_reward(cfg, params, tokens, repeats: int, side: TorchSide):
    """((b) stats, losses of the first two steps) for the same step in transformers/PyTorch."""
    with torch_pair_loss(cfg, params, tokens, side) as (loss_fn, trained):
        return _torch_train_step(loss_fn, trained, repeats, side, tokens.shape[0], "pairs")


def torch_generation(cfg, params, tokens, new, repeats, side: TorchSide) -> dict:
    """(c)'s stats in transformers/PyTorch: `model.generate` sampling `new` tokens after the int
    [B, prompt] `tokens`, at temperature 1, never stopping early."""
    import torch

    with _torch_lm(cfg, params, side) as model:
        model.generation_config.eos_token_id = None  # never stop early: all tokens for every row
        input_ids = side.tensor(tokens, torch.long)
        attention = torch.ones_like(input_ids)

        def run():
            with torch.inference_mode():
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention,
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=new,
                    pad_token_id=0,
                    eos_token_id=None,
                )
            assert out.shape[1] == tokens.shape[1] + new
            return out

        stats = timing.summarize(side.timed(run, repeats), tokens.shape[0] * new, "tokens")
    return {**stats, **side.versions()}


def torch_scoring(setup: dict, prompt_len: int, repeats: int, side: TorchSide):
    """((d) stats, outputs) in transformers/PyTorch: four forwards over the `setup`'s
    sequences giving the policy's and reference's [B, N] log-probs, [B, N] values and [B]
    scores, to compare with the library's."""
    import torch

    cfg, params = setup["cfg"], setup["params"]
    ids = side.tensor(setup["tokens_bs"], torch.long)
    with (
        _torch_lm(cfg, params["policy"], side) as policy,
        _torch_lm(cfg, params["reference"], side) as reference,
        _torch_scalar(cfg, params["value"], side) as (value_base, value_head),
        _torch_scalar(cfg, params["reward"], side) as (reward_base, reward_head),
    ):

        def run():
            with torch.inference_mode():
                logprobs, _ = _torch_response_logprobs(policy, ids, prompt_len)
                ref_logprobs, _ = _torch_response_logprobs(reference, ids, prompt_len)
                values = _torch_values(value_base, value_head, ids, prompt_len)
                hidden = reward_base(input_ids=ids).last_hidden_state[:, -1]
                scores = reward_head(hidden)[:, 0]
            return logprobs, ref_logprobs, values, scores

        stats = timing.summarize(side.timed(run, repeats), ids.shape[0], "sequences")
        outputs = run()
    return {**stats, **side.versions()}, outputs


def torch_ppo_update(setup: dict, data: dict, preset: dict, repeats: int, side: TorchSide) -> dict:
    """The same update in plain PyTorch: GAE, then per minibatch one AdamW step of each model."""
    import torch

    torch.manual_seed(0)
    cfg, params, prompt_len = setup["cfg"], setup["params"], preset["prompt"]
    epochs, minibatches = preset["epochs"], preset["minibatches"]
    ids = side.tensor(data["tokens_bs"], torch.long)
    old_logprobs = side.tensor(data["logprobs_bn"])
    old_values = side.tensor(data["values_bn"])
    rewards = side.tensor(data["rewards_bn"])
    rows, steps = old_logprobs.shape
    with (
        _torch_lm(cfg, params["policy"], side) as policy,
        _torch_scalar(cfg, params["value"], side) as (value_base, value_head),
    ):
        value_params = [*value_base.parameters(), *value_head.parameters()]
        policy_opt = torch.optim.AdamW(policy.parameters(), lr=LEARNING_RATE)
        value_opt = torch.optim.AdamW(value_params, lr=LEARNING_RATE)

        def run():
            with torch.no_grad():  # GAE (gamma = 1) and whitening, once per rollout
                advantages = torch.zeros_like(rewards)
                last = torch.zeros(rows, device=side.device)
                for t in reversed(range(steps)):
                    next_value = old_values[:, t + 1] if t + 1 < steps else torch.zeros_like(last)
                    delta = rewards[:, t] + next_value - old_values[:, t]
                    last = delta + LAM * last
                    advantages[:, t] = last
                returns = advantages + old_values
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
            for _ in range(epochs):
                for mb in torch.randperm(rows, device=side.device).chunk(minibatches):
                    logprobs, logits = _torch_response_logprobs(policy, ids[mb], prompt_len)
                    ratio = torch.exp(logprobs - old_logprobs[mb])
                    adv = advantages[mb]
                    clipped = torch.clamp(ratio, 1 - CLIP_EPS, 1 + CLIP_EPS)
                    loss = torch.maximum(-adv * ratio, -adv * clipped).mean()
                    with torch.no_grad():  # logged, as rlhf_jax does
                        probs = torch.softmax(logits, -1)
                        entropy = -(probs * torch.log_softmax(logits, -1)).sum(-1).mean()
                    policy_opt.zero_grad()
                    loss.backward()
                    policy_opt.step()

                    values = _torch_values(value_base, value_head, ids[mb], prompt_len)
                    old = old_values[mb]
                    values_clipped = old + torch.clamp(values - old, -VALUE_CLIP, VALUE_CLIP)
                    value_loss = (
                        0.5
                        * torch.maximum(
                            (values - returns[mb]) ** 2, (values_clipped - returns[mb]) ** 2
                        ).mean()
                    )
                    value_opt.zero_grad()
                    value_loss.backward()
                    value_opt.step()
            return float(entropy)

        policy.train()  # dropout is 0 in the config
        value_base.train()
        stats = timing.summarize(side.timed(run, repeats), epochs * rows * ids.shape[1], "tokens")
    return {**stats, **side.versions()}
