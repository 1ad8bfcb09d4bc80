"""The recipe's stages that are not a trainer: the world and its tokenizer, sampling and ranking
with a noisy labeler, the reward model's accuracy per task family, best-of-n, and the evaluation
of every model by the gold labeler. Each is `stage_<name>(config, workdir, out) -> summary`, writing
its files to `out`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os

import jax
import numpy as np
from absl import logging

from rlhf_jax.data import pipeline
from rlhf_jax.data.tokenizer import Tokenizer, train_bpe_tokenizer
from rlhf_jax.generation import SamplingConfig, generate_texts, make_sampler
from rlhf_jax.models import CausalLM, ScalarModel, hf
from rlhf_jax.recipes.instructgpt.stage_configs import reward_config, world_data
from rlhf_jax.trainers import run, setup
from rlhf_jax.training import export, steps
from rlhf_jax.training.loop import means, sum_metrics
from rlhf_jax.world import evaluation, labeler
from rlhf_jax.world import tasks as tasks_lib


def _records(config, workdir: str, part: str, split: str) -> list[dict]:
    data = world_data(config, workdir, part, split, split)
    source = setup.open_split(data, split)
    return [
        {k: pipeline.as_text(source[i][k]) for k in ("prompt", "response")}
        for i in range(len(source))
    ]


def stage_world(config, workdir: str, out: str) -> dict:
    """Builds every split of the world and trains the tokenizer on pretraining text and demos."""
    counts = {}
    for part, splits in (
        ("pretrain", ("train", "validation")),
        ("sft", ("train", "validation")),
        ("prompts", ("rm", "ppo", "test")),
    ):
        for split in splits:
            data = world_data(config, workdir, part, split, split)
            counts[f"{part}/{split}"] = len(setup.open_split(data, split))
    texts = [r["prompt"] + r["response"] for r in _records(config, workdir, "pretrain", "train")]
    texts += [r["prompt"] + r["response"] for r in _records(config, workdir, "sft", "train")]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=config.tokenizer_vocab)
    if setup.is_chief():
        tokenizer.save_pretrained(os.path.join(out, "tokenizer"))
    return {"records": counts, "vocab_size": tokenizer.vocab_size}


def _sampler_for(model_dir: str, temperature: float, max_new_tokens: int):
    model_config, params = hf.load_pretrained(model_dir, dropout_rate=0.0)
    tokenizer = Tokenizer.from_pretrained(model_dir)
    sampling = SamplingConfig(
        max_new_tokens,
        temperature=temperature,
        eos_ids=(tokenizer.eos_id,),
        pad_id=tokenizer.pad_id,
    )
    return make_sampler(CausalLM(model_config), sampling), params, tokenizer, model_config


def _generate(
    config,
    sampler,
    params,
    tokenizer,
    prompts: list[str],
    seed: int,
    progress: str,
    sort_by_length: bool = False,
) -> list[str]:
    """Each prompt's response text from `sampler` (the job's batch size and prompt budget; with
    `sort_by_length`, batches of similar lengths, each padded to its own), with a progress bar
    labelled `progress`."""
    return generate_texts(
        sampler,
        params,
        tokenizer,
        prompts,
        batch_size=config.eval.batch_size,
        max_prompt_len=config.max_prompt_len,
        rng=jax.random.key(seed),
        progress=progress,
        sort_by_length=sort_by_length,
    )


def stage_rank(config, workdir: str, out: str) -> dict:
    """K samples of the small SFT model per rm prompt, de-duplicated, ranked by a noisy labeler.

    Writes rank/{train,heldout}.jsonl ({prompt, responses, ranking}); returns the labeler
    temperature, the two-labeler agreement on held-out pairs and the gold ordering's accuracy
    against the labeler (what a perfect reward model would score).
    """
    rng = np.random.default_rng([config.seed, 7])
    prompts = [r["prompt"] for r in _records(config, workdir, "prompts", "rm")]
    sampler, params, tokenizer, _ = _sampler_for(
        os.path.join(workdir, "sft_small", "model"), config.rank.temperature, config.max_new_tokens
    )
    ks = rng.integers(config.rank.k_min, config.rank.k_max + 1, size=len(prompts))
    flat = [p for p, k in zip(prompts, ks, strict=True) for _ in range(k)]
    texts = _generate(
        config,
        sampler,
        params,
        tokenizer,
        flat,
        config.seed,
        "rank: sampling",
        sort_by_length=config.rank.get("sort_by_length", False),
    )
    kept_prompts, kept_responses, single = [], [], 0
    start = 0
    for prompt, k in zip(prompts, ks, strict=True):
        unique = list(dict.fromkeys(t.strip() for t in texts[start : start + k] if t.strip()))
        start += k
        if len(unique) < 2:
            single += 1  # fewer than 2 distinct non-empty samples: nothing to rank
            continue
        kept_prompts.append(prompt)
        kept_responses.append([" " + u for u in unique])
    if len(kept_prompts) < 4:
        raise ValueError(f"Only {len(kept_prompts)} rm prompts had >= 2 distinct samples.")
    totals = evaluation.gold_totals(kept_prompts, kept_responses)  # scored once, used thrice
    gaps = evaluation.pair_gaps(totals)
    try:
        temperature, reachable = labeler.calibrate_temperature(gaps, config.rank.agreement), True
    except ValueError as e:  # too many tied pairs (e.g. a weak SFT model): least noisy labeler
        logging.warning("%s Using the lowest temperature, 1e-3.", e)
        temperature, reachable = 1e-3, False
    records = [
        evaluation.rank_responses(p, r, temperature, rng, totals=t)
        for p, r, t in zip(kept_prompts, kept_responses, totals, strict=True)
    ]
    n_heldout = max(2, int(round(config.rank.heldout_fraction * len(records))))
    heldout_totals = totals[-n_heldout:]
    agreement = labeler.measured_agreement(heldout_totals, temperature, rng)
    gold_accuracy = _gold_order_accuracy(records[-n_heldout:], heldout_totals)
    if setup.is_chief():
        for name, rows in (("train", records[:-n_heldout]), ("heldout", records[-n_heldout:])):
            with open(os.path.join(out, f"{name}.jsonl"), "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
    sizes = [len(r) for r in kept_responses]
    return {
        "prompts": len(prompts),
        "ranked_prompts": len(records),
        "prompts_with_under_2_distinct_samples": single,
        "heldout_prompts": n_heldout,
        "mean_k": float(np.mean(sizes)),
        "pairs": int(sum(k * (k - 1) // 2 for k in sizes)),
        "labeler_temperature": temperature,
        "agreement_target": config.rank.agreement,
        "agreement_target_reachable": reachable,
        "expected_labeler_agreement": labeler.expected_agreement(gaps, temperature),
        "heldout_labeler_agreement": agreement,
        "heldout_gold_order_accuracy": gold_accuracy,
    }


def _gold_agreement(winner_gold: float, loser_gold: float) -> float:
    """1 when the gold score orders a labelled pair as the labeler did, 0.5 on a tie, else 0."""
    return 1.0 if winner_gold > loser_gold else 0.5 if winner_gold == loser_gold else 0.0


def _gold_order_accuracy(records: list[dict], totals: list[list[float]]) -> float:
    """Share of labelled pairs whose order the gold score agrees with (ties count half)."""
    hits = pairs = 0.0
    for record, row in zip(records, totals, strict=True):
        rank = record["ranking"]
        for i in range(len(rank)):
            for j in range(len(rank)):
                if rank[i] < rank[j]:  # the labeler put i above j
                    pairs += 1
                    hits += _gold_agreement(row[i], row[j])
    return hits / max(pairs, 1.0)


def _reward_scorer(config, workdir: str, max_responses: int):
    """`scores(prompt, responses) -> float [len(responses)]`: the run's reward model on up to
    `max_responses` responses of one prompt, one response per row (the same scores as the
    shared-prompt rows it may have trained on, `TokenizeComparisonSharedPrompt`)."""
    data = reward_config(config, workdir).data
    _, model_config, params = export.load_model(os.path.join(workdir, "rm", "model"))
    tokenizer = Tokenizer.from_pretrained(os.path.join(workdir, "sft_small", "model"))
    spec = dataclasses.replace(setup.sequence_spec(data), max_responses=max_responses)
    transform = pipeline.TokenizeComparison(tokenizer, spec)
    model = ScalarModel(model_config)
    score = jax.jit(lambda p, t, m: steps.reward_scores(model, p, t, m))
    no_pairs = np.zeros((0, 2), np.int64)

    def scores(prompt: str, responses: list[str]) -> np.ndarray:
        element = transform.map({"prompt": prompt, "responses": responses, "pairs": no_pairs})
        out = score(params, element["tokens_kt"][None], element["mask_kt"][None])
        return np.asarray(out)[0, : len(responses)]

    return scores


def stage_rm_families(config, workdir: str, out: str) -> dict:
    """The reward model's held-out accuracy per task family, beside the gold ordering's (how
    often the gold score agrees with the labeler on those pairs; ties count half)."""
    del out
    data = reward_config(config, workdir).data
    source = setup.open_split(data, data.eval_split)
    reward_scores = _reward_scorer(config, workdir, config.rank.k_max)
    counts: dict[str, list[float]] = {}
    for i in range(len(source)):
        record = source[i]
        prompt = pipeline.as_text(record["prompt"])
        responses = [pipeline.as_text(r) for r in record["responses"]]
        rm_scores = reward_scores(prompt, responses)
        gold = [labeler.gold_score(prompt, r) for r in responses]
        family = tasks_lib.parse_task(prompt).family
        row = counts.setdefault(family, [0.0, 0.0, 0.0])
        for winner, loser in np.asarray(record["pairs"]).reshape(-1, 2):
            row[0] += float(rm_scores[winner] > rm_scores[loser])
            row[1] += _gold_agreement(gold[winner], gold[loser])
            row[2] += 1.0
    return {
        "by_family": {
            f: {"rm_accuracy": r / n, "gold_order_accuracy": g / n, "pairs": int(n)}
            for f, (r, g, n) in sorted(counts.items())
        }
    }


def stage_best_of_n(config, workdir: str, out: str) -> dict:
    """How much any reward could gain by choosing among the small SFT model's own samples.

    N samples per held-out prompt at `best_of_n.temperature`; against the SFT model's greedy
    answer (the report's baseline), the gold win rate of one sample, of the sample the reward
    model scores highest, and of the sample the gold labeler scores highest (the headroom that
    reranking N samples offers a perfect reward). Also the RM's accuracy on the sample pairs whose
    gold totals differ, against the gold order itself (no labeler noise).
    """
    del out
    n, temperature = config.best_of_n.n, config.best_of_n.temperature
    prompts = [r["prompt"] for r in _records(config, workdir, "prompts", "test")]
    sft_dir = os.path.join(workdir, "sft_small", "model")
    answers = {}
    for name, temp, asked, seed in (
        ("greedy", config.eval.temperature, prompts, config.seed + 1),
        ("samples", temperature, [p for p in prompts for _ in range(n)], config.seed + 2),
    ):
        sampler, params, tokenizer, _ = _sampler_for(sft_dir, temp, config.max_new_tokens)
        answers[name] = _generate(
            config, sampler, params, tokenizer, asked, seed, f"best_of_n: {name}"
        )
    baseline = evaluation.judge(prompts, answers["greedy"])
    flat = evaluation.judge([p for p in prompts for _ in range(n)], answers["samples"])
    judged = [flat[i * n : (i + 1) * n] for i in range(len(prompts))]
    gold = np.asarray([[s.total for s in row] for row in judged])
    reward_scores = _reward_scorer(config, workdir, n)
    rm = np.stack(
        [
            reward_scores(p, [" " + t.strip() for t in answers["samples"][i * n : (i + 1) * n]])
            for i, p in enumerate(prompts)
        ]
    )
    hits = pairs = 0
    for g_row, r_row in zip(gold, rm, strict=True):
        for a, b in itertools.combinations(range(n), 2):
            if not np.isclose(g_row[a], g_row[b]):
                pairs += 1
                hits += (r_row[a] > r_row[b]) == (g_row[a] > g_row[b])

    def pick(choice: np.ndarray) -> dict:
        chosen = [row[int(c)] for row, c in zip(judged, choice, strict=True)]
        return evaluation.win_rate(chosen, baseline, seed=config.seed)

    return {
        "n": n,
        "temperature": temperature,
        "prompts": len(prompts),
        "win_rate_vs_sft_greedy": {
            "one_sample": pick(np.zeros(len(prompts), int)),
            "rm_best": pick(rm.argmax(axis=1)),
            "gold_best": pick(gold.argmax(axis=1)),
        },
        "rm_accuracy_on_gold_ordered_sample_pairs": hits / max(pairs, 1),
        "gold_ordered_sample_pairs": pairs,
    }


def few_shot_prompt(prompt: str, rng: np.random.Generator) -> str:
    """`prompt` with two solved tasks of its family in front (unchanged if already few-shot)."""
    if prompt.count(tasks_lib.ANSWER_CUE) > 1:
        return prompt
    family = tasks_lib.parse_task(prompt).family
    shots = [tasks_lib.make_task(family, rng) for _ in range(2)]
    return "".join(f"{s.instruction}{tasks_lib.ANSWER_CUE} {s.answer}\n\n" for s in shots) + prompt


def _pretrain_nll(config, workdir: str, model_config, params, tokenizer) -> float:
    """Mean NLL (nats/token, every token) of the pretraining validation split under a model."""
    data = world_data(config, workdir, "pretrain", "validation", "validation")
    batches = run.eval_batches(
        setup.open_split(data, "validation"),
        pipeline.TokenizeDemonstration(tokenizer, setup.sequence_spec(data), loss_on_prompt=True),
        config.eval.batch_size,
        config.seed,
    )
    eval_step = jax.jit(steps.make_eval_step(steps.sft_forward(CausalLM(model_config))))
    totals = None
    for batch in batches:
        batch = {k: v for k, v in batch.items() if k.endswith("_bt")}
        totals = sum_metrics(totals, eval_step(params, batch))
    return means(totals)["nll"]


def evaluated_models(config, workdir: str) -> list[tuple[str, str, bool]]:
    """(name, model folder, few-shot prompts) of every model the report compares: this run's,
    then `config.eval.extra_models` ("name=model_dir,..."), which are answered zero-shot."""
    models = []
    for size in config.sizes:
        models += [
            (f"base_{size}_zero_shot", f"pretrain_{size}", False),
            (f"base_{size}_few_shot", f"pretrain_{size}", True),
            (f"sft_{size}", f"sft_{size}", False),
        ]
    models += [("ppo_small", "ppo", False), ("ppo_ptx_small", "ppo_ptx", False)]
    models = [(name, os.path.join(workdir, stage, "model"), shot) for name, stage, shot in models]
    return models + [(name, path, False) for name, path in extra_models(config, models)]


def extra_models(config, own: list[tuple[str, str, bool]] = ()) -> list[tuple[str, str]]:
    """(name, model_dir) of `config.eval.extra_models`, checked: each "name=model_dir" item has
    a free name (not one of `own`'s) and a folder holding a model."""
    taken, out = {name for name, _, _ in own}, []
    for item in filter(None, (x.strip() for x in config.eval.get("extra_models", "").split(","))):
        name, sep, model_dir = (part.strip() for part in item.partition("="))
        if not sep or not name or not model_dir:
            raise ValueError(f"eval.extra_models: expected 'name=model_dir', got {item!r}.")
        if name in taken:
            raise ValueError(f"eval.extra_models: the name {name!r} is taken; choose another.")
        if not os.path.isfile(os.path.join(model_dir, "config.json")):
            raise FileNotFoundError(
                f"eval.extra_models: {name}={model_dir} holds no model (no config.json)."
            )
        taken.add(name)
        out.append((name, os.path.abspath(model_dir)))
    return out


def stage_evaluate(config, workdir: str, out: str) -> dict:
    """Every model answers the held-out prompts (same decoding); the gold labeler judges."""
    prompts = [r["prompt"] for r in _records(config, workdir, "prompts", "test")]
    responses, scores, nlls = {}, {}, {}
    for name, model_dir, few_shot in evaluated_models(config, workdir):
        shot_rng = np.random.default_rng([config.seed, 11])
        asked = [few_shot_prompt(p, shot_rng) for p in prompts] if few_shot else prompts
        sampler, params, tokenizer, model_config = _sampler_for(
            model_dir, config.eval.temperature, config.max_new_tokens
        )
        if not few_shot:  # the few-shot rows reuse their zero-shot model
            nlls[name] = _pretrain_nll(config, workdir, model_config, params, tokenizer)
        responses[name] = _generate(
            config, sampler, params, tokenizer, asked, config.seed + 1, f"evaluate: {name}"
        )
        scores[name] = evaluation.judge(prompts, responses[name])
    baseline = scores["sft_small"]
    metrics = {
        name: evaluation.model_metrics(s, baseline, seed=config.seed) for name, s in scores.items()
    }
    for name, nll in nlls.items():
        metrics[name]["pretrain_nll"] = nll
    if setup.is_chief():
        with open(os.path.join(out, "responses.jsonl"), "w") as f:
            for i, prompt in enumerate(prompts):
                row = {"prompt": prompt}
                for name in responses:
                    row[name] = {"response": responses[name][i], "gold": scores[name][i].total}
                f.write(json.dumps(row) + "\n")
    summary = {"prompts": len(prompts), "baseline": "sft_small", "models": metrics}
    if extra := extra_models(config):
        summary["extra_models"] = dict(extra)
    return summary
