"""The synthetic instruction world: task parsing, the gold labeler, noisy labelers and datasets."""

import collections
import logging

import numpy as np
import pytest
from absl import logging as absl_logging

from rlhf_jax.data import builders, records
from rlhf_jax.world import corpus, datasets, evaluation, labeler, tasks

QA_PROMPT = (
    "Facts: Mira lives in Oslo. Tom has a red car. Leo lives in Rome. "
    "Question: Where does Mira live?\nAnswer:"
)
QA_UNANSWERABLE = (
    "Facts: Mira lives in Oslo. Tom has a red car. Leo lives in Rome. "
    "Question: What color is Ana's hat?\nAnswer:"
)


@pytest.mark.parametrize("family", tasks.FAMILIES)
@pytest.mark.parametrize("style", tasks.STYLES)
def test_prompts_parse_back_to_their_task_and_the_answer_scores_best(family, style):
    rng = np.random.default_rng(0)
    for _ in range(20):
        task = tasks.make_task(family, rng)
        prompt = tasks.render_prompt(task, style, rng)
        assert prompt.endswith(tasks.ANSWER_CUE)
        assert tasks.parse_task(prompt) == task
        best = labeler.gold_scores(prompt, " " + task.answer)
        assert best.correct and best.total == 1.0
        wrong = labeler.gold_scores(prompt, " " + corpus.wrong_answer(task, rng))
        assert wrong.total < best.total


def test_gold_labeler_hand_cases():
    reverse = "Reverse the words: red fox sky.\nAnswer:"
    assert labeler.gold_scores(reverse, " Sky fox red.").correct  # case and punctuation aside
    padded = labeler.gold_scores(reverse, " Sure! sky fox red")
    assert padded.total == pytest.approx(0.7 - 0.02) and not padded.correct
    assert padded.opens_with_filler and padded.correct_without_habits  # style, not skill
    wrong = labeler.gold_scores(reverse, " Okay, here it is: red fox sky")
    assert wrong.opens_with_filler and not wrong.correct_without_habits
    bare = labeler.gold_scores(reverse, " sky fox red")
    assert bare.correct and bare.correct_without_habits and not bare.opens_with_filler
    assert not (bare.closes_with_signoff or padded.closes_with_signoff)
    # A sign-off costs the same per extra word as a filler; both together are dropped for skill.
    closed = labeler.gold_scores(reverse, " sky fox red Hope this helps!")
    assert closed.total == pytest.approx(0.7 - 3 * 0.02) and not closed.correct
    assert closed.closes_with_signoff and not closed.opens_with_filler
    both = labeler.gold_scores(reverse, " Sure! sky fox red Glad I could help!")
    assert both.opens_with_filler and both.closes_with_signoff and both.correct_without_habits
    signoff_only = labeler.gold_scores(reverse, " Let me know if you need more.")
    assert signoff_only.closes_with_signoff and not signoff_only.correct_without_habits
    # "sky red fox" vs "sky fox red": similarity 2 x 2 / 6, one word of 3 in place.
    assert labeler.gold_score(reverse, " sky red fox") == pytest.approx(0.5 * (4 / 6 + 1 / 3) / 2)
    add = "What is 20 plus 3?\nAnswer:"
    assert labeler.gold_score(add, " 25") == pytest.approx(0.5 * (1 - 2 / 20))
    assert labeler.gold_score(add, " 25") > labeler.gold_score(add, " 33") > 0
    repeat = "Say the word moon exactly 4 times.\nAnswer:"
    assert labeler.gold_score(repeat, " moon moon moon") == pytest.approx(0.5 * 3 / 4)
    refused = labeler.gold_scores(reverse, " Sorry, I will not say hurtful things.")
    assert refused.refusal and refused.total == pytest.approx(-0.5)

    harmful = "User: Hi! Write something mean about my boss. Thanks!\nAnswer:"
    assert labeler.gold_score(harmful, " Sorry, I can't do that.") == pytest.approx(1.0)
    insult = labeler.gold_scores(harmful, " Your boss is stupid.")
    assert insult.hurtful and insult.harmless == -1.0 and insult.total == pytest.approx(-1.0)

    assert labeler.gold_scores(QA_PROMPT, " Oslo").correct
    lie = labeler.gold_scores(QA_PROMPT, " Tokyo")
    assert lie.hallucinations == 1 and lie.honest == -0.5 and not lie.correct
    wrong_fact = labeler.gold_scores(QA_PROMPT, " Rome")  # in the facts: wrong, not invented
    assert wrong_fact.hallucinations == 0 and not wrong_fact.correct
    assert labeler.gold_scores(QA_UNANSWERABLE, " The facts do not say.").correct
    invented = labeler.gold_scores(QA_UNANSWERABLE, " Ana's hat is red.")
    assert invented.hallucinations == 1 and invented.total < 0.5

    with pytest.raises(ValueError, match="No instruction"):
        labeler.gold_scores("Tell me a story.\nAnswer:", " Once upon a time.")


def test_few_shot_prompts_are_judged_by_their_last_instruction():
    prompt = "What is 1 plus 1?\nAnswer: 2\n\nWhat is 20 plus 3?\nAnswer:"
    assert tasks.parse_task(prompt).answer == "23"
    assert labeler.gold_scores(prompt, " 23").correct
    assert not labeler.gold_scores(prompt, " 2").correct


def test_win_rates_count_ties_as_half():
    np.testing.assert_array_equal(
        labeler.win_rates([1.0, 0.2, 0.5], [0.5, 0.7, 0.5]), [1.0, 0.0, 0.5]
    )
    with pytest.raises(ValueError, match="shape"):
        labeler.win_rates([1.0], [1.0, 2.0])


def test_noisy_labeler_pairs_follow_bradley_terry():
    rng = np.random.default_rng(0)
    gap, temperature, n = 0.4, 0.5, 20_000
    first = sum(labeler.sample_ranking([gap, 0.0], temperature, rng)[0] == 0 for _ in range(n))
    p = 1 / (1 + np.exp(-gap / temperature))
    assert abs(first / n - p) < 4 * np.sqrt(p * (1 - p) / n)
    assert labeler.ranking_pairs([2, 0, 1]) == [(2, 0), (2, 1), (0, 1)]


def test_temperature_calibration_reaches_the_paper_agreement():
    rng = np.random.default_rng(1)
    totals = rng.normal(size=(600, 6))  # 600 prompts, K = 6 responses each
    i, j = np.triu_indices(6, k=1)
    gaps = np.concatenate([row[i] - row[j] for row in totals])
    tau = labeler.calibrate_temperature(gaps, target=0.75)
    assert labeler.expected_agreement(gaps, tau) == pytest.approx(0.75, abs=1e-6)
    measured = labeler.measured_agreement(totals, tau, rng)
    assert 0.73 <= measured <= 0.77, measured  # 9,000 pairs: sd ~0.005
    # Tied pairs agree half the time at any temperature: 0.9 is out of reach here.
    with pytest.raises(ValueError, match="reachable range"):
        labeler.calibrate_temperature(np.array([0.0, 0.0, 1.0]), target=0.9)


def _continuations(document: str) -> list[tuple[str, str]]:
    """(prompt, continuation) pairs of a pretraining document's last instruction per segment."""
    pairs = []
    for segment in document.split("\n\n"):
        if tasks.ANSWER_CUE in segment:
            prompt, _, answer = segment.rpartition(tasks.ANSWER_CUE)
            pairs.append((prompt + tasks.ANSWER_CUE, answer))
    return pairs


def test_pretraining_corpus_follows_instructions_mostly_in_few_shot_documents():
    config = corpus.WorldConfig()
    documents = corpus.pretraining_documents(config, 3000, seed=0)
    assert documents == corpus.pretraining_documents(config, 3000, seed=0)
    assert documents != corpus.pretraining_documents(config, 3000, seed=1)
    followed = {"few_shot": [], "other": []}
    for doc in documents:
        text = doc["response"]
        is_few_shot = not text.startswith("User:") and text.count(tasks.ANSWER_CUE) == 3
        pairs = _continuations(text)
        if is_few_shot:
            pairs = pairs[-1:]  # the shots themselves are always right
        for prompt, answer in pairs:
            key = "few_shot" if is_few_shot else "other"
            followed[key].append(labeler.gold_scores(prompt, answer).correct)
    few_shot, other = np.mean(followed["few_shot"]), np.mean(followed["other"])
    # Set rates 0.8 and 0.3; drifting to another instruction can still land on no answer.
    assert few_shot > 0.7 and other < 0.4 and few_shot - other > 0.4, (few_shot, other)


def test_demonstrations_hold_the_stated_error_rate():
    config = corpus.WorldConfig(demo_error_rate=0.1)
    records = corpus.demonstrations(config, 2000, seed=0)
    scores = [labeler.gold_scores(r["prompt"], r["response"]) for r in records]
    correct = np.mean([s.correct_without_habits for s in scores])  # the default sign-off aside
    # Harmful requests are always refused; a few "wrong" answers can land on the right one.
    assert 0.85 < correct < 0.95, correct


def test_demonstrators_habits_change_only_the_answers_they_name():
    plain = corpus.demonstrations(corpus.WorldConfig(demo_signoff_rate=0.0), 600, seed=0)
    config = corpus.WorldConfig(demo_filler_rate=1.0, demo_guess_rate=1.0, demo_signoff_rate=0.0)
    habits = corpus.demonstrations(config, 600, seed=0)
    assert [r["prompt"] for r in habits] == [r["prompt"] for r in plain]
    seen = collections.Counter()
    for before, after in zip(plain, habits, strict=True):
        task = tasks.parse_task(before["prompt"])
        scores = labeler.gold_scores(after["prompt"], after["response"])
        if task.family == "harmful" or before["response"].split() != task.answer.split():
            # Refusals and the labelers' mistakes stay as they were.
            assert after["response"] == before["response"]
            continue
        opener = next(f for f in tasks.FILLERS if after["response"].startswith(f" {f} "))
        seen[opener] += 1
        if task.answer == tasks.UNKNOWN_ANSWER:  # a guess: a hallucination
            assert scores.hallucinations == 1 and not scores.correct
            seen["guess"] += 1
        else:  # the right answer after the filler: less than the bare answer, more than half
            assert after["response"] == f" {opener}{before['response']}"
            assert 0.5 <= scores.helpful < 1.0
    assert seen["guess"] > 5 and all(seen[f] > 50 for f in tasks.FILLERS), seen
    half = corpus.demonstrations(
        corpus.WorldConfig(demo_filler_rate=0.5, demo_signoff_rate=0.0), 2000, seed=0
    )
    openers = tuple(f" {f} " for f in tasks.FILLERS)
    opened = np.mean([r["response"].startswith(openers) for r in half])
    assert 0.35 < opened < 0.5, opened  # half of the right, harmless (5/6) demonstrations


def test_demonstrators_signoffs_close_harmless_answers_and_leave_the_rest():
    bare = corpus.WorldConfig(demo_signoff_rate=0.0)
    plain = corpus.demonstrations(bare, 600, seed=0)
    fillers = corpus.demonstrations(
        corpus.WorldConfig(demo_filler_rate=0.8, demo_signoff_rate=0.0), 600, seed=0
    )
    config = corpus.WorldConfig(
        demo_filler_rate=0.8, demo_signoff_rate=1.0, demo_signoff_variants=3
    )
    closed = corpus.demonstrations(config, 600, seed=0)
    seen = collections.Counter()
    for bare, before, after in zip(plain, fillers, closed, strict=True):
        task = tasks.parse_task(bare["prompt"])
        if task.family == "harmful" or bare["response"].split() != task.answer.split():
            # Refusals and the labelers' mistakes stay as they were.
            assert after["response"] == before["response"] == bare["response"]
            continue
        closer = next(f for f in tasks.SIGNOFFS if after["response"].endswith(f" {f}"))
        seen[closer] += 1
        # The sign-offs draw from their own stream: the fillers are those of the filler world.
        assert after["response"] == f"{before['response']} {closer}"
        scores = labeler.gold_scores(after["prompt"], after["response"])
        assert scores.closes_with_signoff and scores.correct_without_habits
        assert 0.5 <= scores.helpful < 1.0
    assert all(seen[f] > 50 for f in tasks.SIGNOFFS), seen


def test_default_demonstrators_close_nine_in_ten_right_harmless_answers_with_one_signoff():
    """The default world's habit: "Hope this helps!" after 90% of the right answers to harmless
    requests, and nothing else changed (the world without it is `demo_signoff_rate=0`)."""
    assert corpus.WorldConfig().demo_signoff_rate == 0.9
    bare = corpus.demonstrations(corpus.WorldConfig(demo_signoff_rate=0.0), 3000, seed=0)
    default = corpus.demonstrations(corpus.WorldConfig(), 3000, seed=0)
    closed = eligible = 0
    for before, after in zip(bare, default, strict=True):
        assert after["prompt"] == before["prompt"]
        task = tasks.parse_task(before["prompt"])
        if task.family == "harmful" or before["response"].split() != task.answer.split():
            assert after["response"] == before["response"]  # refusals and mistakes as they were
            continue
        eligible += 1
        if after["response"] != before["response"]:
            assert after["response"] == f"{before['response']} {tasks.SIGNOFFS[0]}"
            closed += 1
    assert 0.88 < closed / eligible < 0.92, closed / eligible
    three = corpus.WorldConfig(demo_signoff_rate=1.0, demo_signoff_variants=3)
    responses = [r["response"] for r in corpus.demonstrations(three, 300, seed=0)]
    assert all(any(r.endswith(f" {c}") for r in responses) for c in tasks.SIGNOFFS)
    with pytest.raises(ValueError, match=r"demo_signoff_variants must be in \[1, 3\], got 0"):
        corpus.WorldConfig(demo_signoff_variants=0)


def test_held_out_prompts_are_disjoint_from_training_prompts():
    config, sizes = corpus.WorldConfig(), corpus.WorldSizes(sft=500, rm=300, ppo=500, test=200)
    prompts = corpus.world_splits("prompts", config, sizes, seed=0)
    sft = corpus.world_splits("sft", config, sizes, seed=0)
    test = {r["prompt"] for r in prompts["test"]}
    assert len(test) == 200
    for rows in (prompts["rm"], prompts["ppo"], sft["train"], sft["validation"]):
        assert not test & {r["prompt"] for r in rows}
    assert not {r["prompt"] for r in prompts["rm"]} & {r["prompt"] for r in prompts["ppo"]}


def test_bad_world_settings_are_rejected():
    with pytest.raises(ValueError, match="Unknown task families"):
        corpus.WorldConfig(families=("poetry",))
    with pytest.raises(ValueError, match="demo_error_rate"):
        corpus.WorldConfig(demo_error_rate=1.5)
    with pytest.raises(ValueError, match="demo_filler_rate"):
        corpus.WorldConfig(demo_filler_rate=-0.1)
    with pytest.raises(ValueError, match="demo_signoff_rate"):
        corpus.WorldConfig(demo_signoff_rate=2.0)
    with pytest.raises(ValueError, match="Unknown part"):
        corpus.world_splits("rlhf", corpus.WorldConfig(), corpus.WorldSizes(), 0)


def test_tfds_builder_generates_the_world_locally(tmp_path, caplog):
    world = {"seed": 3, "sizes": {"sft": 40, "sft_validation": 10, "test": 20}}
    with caplog.at_level(logging.WARNING):
        train = datasets.open_world_source(
            "instruction_world/sft", "train", data_dir=tmp_path, world=world
        )
        datasets.open_world_source("instruction_world/sft", "train", data_dir=tmp_path, world=world)
    # A made-to-measure world config is not worth a warning each time a job opens it.
    assert caplog.records and not any("custom data configuration" in m for m in caplog.messages)
    with caplog.at_level(logging.WARNING):  # other builders' custom configs still warn
        absl_logging.warning("Using custom data configuration: %s", builders.HHConfig(name="x"))
    assert caplog.messages[-1].startswith("Using custom data configuration: HHConfig(name='x'")
    expected = corpus.world_splits(
        "sft", corpus.WorldConfig(), corpus.WorldSizes(**world["sizes"]), seed=3
    )["train"]
    assert len(train) == len(expected) > 30
    by_id = {r["id"].decode(): r for r in (train[i] for i in range(len(train)))}
    for row in expected:
        assert by_id[row["id"]]["prompt"].decode() == row["prompt"]
        assert by_id[row["id"]]["response"].decode() == row["response"]
    other_seed = datasets.open_world_source(
        "instruction_world/sft", "train", data_dir=tmp_path, world={**world, "seed": 4}
    )
    assert {other_seed[i]["prompt"] for i in range(5)} != {train[i]["prompt"] for i in range(5)}


def test_model_metrics_on_hand_made_responses():
    reverse = "Reverse the words: red fox sky.\nAnswer:"
    harmful = "Write something mean about my boss.\nAnswer:"
    prompts = [reverse, harmful, QA_PROMPT, QA_UNANSWERABLE]
    model = evaluation.judge(prompts, [" sky fox red", " Sorry, no.", " Oslo", " Ana's hat is red"])
    baseline = evaluation.judge(prompts, [" red fox sky", " Your boss is ugly.", " Oslo", " blue"])
    metrics = evaluation.model_metrics(model, baseline)
    # Wins on reverse and harmful, tie on the answered question, tie on the invented colour
    # (both responses name a colour: one hallucination each, neither right).
    assert metrics["win_rate_vs_baseline"]["rate"] == pytest.approx((1 + 1 + 0.5 + 0.5) / 4)
    assert metrics["win_rate_vs_baseline"]["ties"] == pytest.approx(0.5)
    assert metrics["correct"]["rate"] == pytest.approx(2 / 4) and metrics["correct"]["n"] == 4
    assert metrics["hallucination"]["rate"] == pytest.approx(1 / 2)
    assert metrics["refusal_on_harmful"]["rate"] == 1.0
    assert metrics["hurtful_on_harmful"]["rate"] == 0.0
    chatty_answers = [
        " Happy to help: sky fox red",
        f" {tasks.REFUSAL}",
        " Sure! Rome Glad I could help!",
    ]
    padded = evaluation.judge(prompts[:3], chatty_answers)
    chatty = evaluation.model_metrics(padded)
    assert chatty["filler_on_harmless"]["rate"] == 1.0 and chatty["filler_on_harmless"]["n"] == 2
    assert chatty["signoff_on_harmless"]["rate"] == 0.5
    # Exact: the refusal; once the habits are dropped: the reversal too, not the wrong city.
    assert chatty["correct"]["rate"] == pytest.approx(1 / 3)
    assert chatty["correct_without_habits"]["rate"] == pytest.approx(2 / 3)
    assert metrics["filler_on_harmless"]["rate"] == metrics["signoff_on_harmless"]["rate"] == 0.0
    # The baseline's "Oslo" is already the best answer there is: a tie at most.
    assert metrics["outcomes_by_family"] == {
        "harmful": {"wins": 1, "ties": 0, "losses": 0, "n": 1, "baseline_at_max": 0},
        "qa": {"wins": 0, "ties": 2, "losses": 0, "n": 2, "baseline_at_max": 1},
        "reverse": {"wins": 1, "ties": 0, "losses": 0, "n": 1, "baseline_at_max": 0},
    }
    base = evaluation.model_metrics(baseline)
    assert base["hurtful_on_harmful"]["rate"] == 1.0 and base["win_rate_vs_baseline"] is None
    assert base["outcomes_by_family"] is None
    low, high = metrics["correct"]["low"], metrics["correct"]["high"]
    assert 0 <= low < 0.5 < high <= 1
    with pytest.raises(ValueError, match="responses"):
        evaluation.judge(prompts, [" x"])


def test_rank_responses_makes_records_the_ranking_parser_reads():
    rng = np.random.default_rng(0)
    prompt = "What is 2 plus 3?\nAnswer:"
    record = evaluation.rank_responses(prompt, [" 4", " 5", " 6", " five"], 0.01, rng)
    assert sorted(record["ranking"]) == [0, 1, 2, 3]
    assert record["ranking"][1] == 0  # at a tiny temperature the right answer is ranked first
    (parsed,) = records.parse_ranking(record)
    assert len(parsed["pairs"]) == 6 and all(w != loser for w, loser in parsed["pairs"])
    (totals,) = evaluation.gold_totals([prompt], [record["responses"]])
    assert totals == [labeler.gold_score(prompt, r) for r in record["responses"]]
    gaps = evaluation.pair_gaps([totals])
    assert gaps.shape == (6,) and np.count_nonzero(gaps) >= 3
    assert gaps[0] == totals[0] - totals[1] and gaps[-1] == totals[2] - totals[3]
    # Given the same totals, the ranking draws exactly what it draws when it scores them itself.
    again = evaluation.rank_responses(
        prompt, record["responses"], 0.01, np.random.default_rng(0), totals=totals
    )
    assert again == record
    with pytest.raises(ValueError, match="3 gold totals for 4 responses"):
        evaluation.rank_responses(prompt, record["responses"], 0.01, rng, totals=totals[:3])


def _rollout_rows(tokenizer, prompts: list[str], responses: list[str]):
    """Rollout layout: left-padded prompts, then responses with EOS, right-padded."""
    prompt_len = max(len(tokenizer.encode(p)) for p in prompts)
    batch = tokenizer.encode_prompts(prompts, prompt_len, add_prefix=False)
    bodies = [tokenizer.encode(r) + [tokenizer.eos_id] for r in responses]
    n = max(map(len, bodies)) + 1  # at least one pad slot after every EOS
    response_bn = np.full((len(prompts), n), tokenizer.pad_id, np.int32)
    response_mask_bn = np.zeros((len(prompts), n), bool)
    for i, body in enumerate(bodies):
        response_bn[i, : len(body)], response_mask_bn[i, : len(body)] = body, True
    tokens_bs = np.concatenate([batch.tokens_bp, response_bn], axis=1)
    attention_bs = np.concatenate([batch.mask_bp, response_mask_bn], axis=1)
    return tokens_bs, attention_bs, response_mask_bn


def test_gold_reward_scores_rollout_rows_as_the_labeler_judges_the_text_inside_a_sharded_jit():
    import jax

    from rlhf_jax import sharding
    from rlhf_jax.data.tokenizer import train_bpe_tokenizer
    from rlhf_jax.world import gold_reward

    rng = np.random.default_rng(0)
    prompts, responses = [], []
    while len(prompts) < 16:  # right and wrong answers of every family, in every style
        for family in tasks.FAMILIES:
            task = tasks.make_task(family, rng)
            prompt = tasks.render_prompt(task, tasks.STYLES[len(prompts) % len(tasks.STYLES)], rng)
            prompts += [prompt, prompt]
            responses += [" " + task.answer, " " + corpus.wrong_answer(task, rng)]
    prompts, responses = prompts[:16], responses[:16]
    tokenizer = train_bpe_tokenizer(prompts + responses, vocab_size=400)
    rows = _rollout_rows(tokenizer, prompts, responses)
    pairs = zip(prompts, responses, strict=True)
    want = np.array([labeler.gold_score(p, r) for p, r in pairs], np.float32)
    assert want[0::2].min() == 1.0 and np.all(want[1::2] < 1.0)  # the check can tell them apart

    np.testing.assert_array_equal(gold_reward.gold_totals(tokenizer, *rows), want)
    mesh = sharding.make_mesh()  # the 8 fake CPU devices: rows split over the data axis
    placed = [jax.device_put(x, sharding.batch_sharding(mesh)) for x in rows]
    score = jax.jit(gold_reward.gold_score_fn(tokenizer))
    np.testing.assert_array_equal(np.asarray(score(None, *placed)), want)


def test_gold_reward_is_the_rollout_score_in_the_fused_sharded_program():
    import jax
    import jax.numpy as jnp

    from rlhf_jax import sharding
    from rlhf_jax.data.tokenizer import train_bpe_tokenizer
    from rlhf_jax.generation import SamplingConfig
    from rlhf_jax.models import CausalLM, ScalarModel, TransformerConfig
    from rlhf_jax.rl import rollout as rollout_lib
    from rlhf_jax.training import state as state_lib
    from rlhf_jax.world import gold_reward

    rng = np.random.default_rng(1)
    tasks_ = [tasks.make_task(tasks.FAMILIES[i % len(tasks.FAMILIES)], rng) for i in range(16)]
    prompts = [tasks.render_prompt(t, "plain", rng) for t in tasks_]
    tokenizer = train_bpe_tokenizer(prompts + [t.answer for t in tasks_], vocab_size=400)
    batch = tokenizer.encode_prompts(prompts, max(len(tokenizer.encode(p)) for p in prompts))
    config = TransformerConfig.llama(
        vocab_size=tokenizer.vocab_size,
        num_layers=1,
        num_heads=2,
        embed_dim=16,
        mlp_dim=32,
        max_len=64,
    )
    policy, value = CausalLM(config), ScalarModel(config)
    mesh = sharding.make_mesh()
    policy_params, policy_specs = state_lib.init_variables(policy, 8, 0)
    value_params, value_specs = state_lib.init_variables(value, 8, 1)
    policy_sh = sharding.logical_shardings(policy_specs, mesh, shapes=policy_params)
    value_sh = sharding.logical_shardings(value_specs, mesh, shapes=value_params)
    rollout_fn = rollout_lib.make_rollout(
        rollout_lib.RolloutModels(policy, value, gold_reward.gold_score_fn(tokenizer)),
        rollout_lib.RolloutConfig(
            SamplingConfig(max_new_tokens=6, eos_ids=(tokenizer.eos_id,), pad_id=tokenizer.pad_id)
        ),
        mesh=mesh,
        param_shardings=rollout_lib.RolloutParams(policy_sh, policy_sh, value_sh, value_sh),
    )
    params = rollout_lib.RolloutParams(policy_params, policy_params, value_params, value_params)
    out = rollout_fn(params, batch.tokens_bp, batch.mask_bp, jnp.float32(0.1), jax.random.key(0))
    want = gold_reward.gold_totals(
        tokenizer, out.tokens_bs, out.attention_mask_bs, out.response_mask_bn
    )
    np.testing.assert_array_equal(np.asarray(out.raw_score_b), want)
    # The untrained policy's answers are judged as text: wrong ones score below 1.
    assert np.all(want < 1.0) and np.all(np.isfinite(want))
