"""The end-to-end job's smoke preset in a subprocess: every stage runs, the report, its plots and
its metrics JSON are produced and well-formed, a rerun skips the finished stages, and a run killed
inside a stage resumes from its checkpoint to the same figures. The smoke models are far too
small to be good; nothing here asserts that they are."""

import json
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from experiments import benchmark
from experiments import instructgpt as instructgpt_cli
from experiments import instructgpt_report as report_cli
from rlhf_jax.recipes import instructgpt
from rlhf_jax.recipes.instructgpt import job, presets, stage_configs
from rlhf_jax.recipes.instructgpt import labeler_stages as stages
from rlhf_jax.recipes.instructgpt import report as instructgpt_report
from rlhf_jax.trainers import setup
from rlhf_jax.world import tasks

from .test_checkpoint_resume import REPO, subprocess_env

# The default run of the preset before the world's demonstrators closed their answers with a
# sign-off (the same preset in the world without the habit); the ablations made at that preset
# stand beside it.
NO_SIGNOFFS_RUN = (
    REPO / "experiments" / "results" / "instructgpt_ablations" / "default_without_signoffs"
)

STAGES = [
    "world",
    "pretrain_small",
    "pretrain_large",
    "sft_small",
    "sft_large",
    "rank",
    "rm",
    "rm_families",
    "best_of_n",
    "ppo",
    "ppo_ptx",
    "evaluate",
]


def test_entry_points_share_one_process_without_flag_clashes():
    # pytest imports every experiment module into one process; absl flags are process-global.
    assert callable(benchmark.main) and callable(instructgpt_cli.main)


def test_presets_keep_the_larger_model_at_least_4x_the_smaller():
    from rlhf_jax.models import CausalLM
    from rlhf_jax.training import state as state_lib

    for preset in ("default", "smoke"):
        config = presets.get_config(preset)
        counts = {}
        for size in ("small", "large"):
            # The model config the pretraining stage builds from the preset.
            stage = stage_configs.pretrain_config(config, "/unused", size)
            model_config = setup.scratch_model_config(stage.model, config.tokenizer_vocab)
            # Shapes only (eval_shape): the same parameter tree, nothing initialised.
            params = jax.eval_shape(
                lambda c=model_config: state_lib.init_variables(CausalLM(c), 8, seed=0)[0]
            )
            counts[size] = sum(x.size for x in jax.tree.leaves(params))
        assert counts["large"] >= 4 * counts["small"], (preset, counts)
    with pytest.raises(ValueError, match="Unknown preset"):
        presets.get_config("huge")


def test_few_shot_prompts_add_two_solved_tasks_of_the_same_family():
    rng = np.random.default_rng(0)
    prompt = "User: Hi! What is 3 plus 4? Thanks!\nAnswer:"
    shot = stages.few_shot_prompt(prompt, rng)
    assert shot.endswith(prompt) and shot.count(tasks.ANSWER_CUE) == 3
    assert tasks.parse_task(shot) == tasks.parse_task(prompt)
    assert stages.few_shot_prompt(shot, rng) == shot  # already few-shot


def test_stage_configs_follow_the_rm_size_and_value_model_knobs(tmp_path):
    config = presets.get_config("smoke")
    assert stage_configs.reward_config(config, str(tmp_path)).model.sft_dir.endswith(
        "sft_small/model"
    )
    assert stage_configs.ppo_config(config, str(tmp_path), ptx=False).ppo.value_model == "reward"
    config.rm.sft_size, config.ppo.value_model = "large", "policy_head"
    assert stage_configs.reward_config(config, str(tmp_path)).model.sft_dir.endswith(
        "sft_large/model"
    )
    assert (
        stage_configs.ppo_config(config, str(tmp_path), ptx=True).ppo.value_model == "policy_head"
    )
    ppo = stage_configs.ppo_config(config, str(tmp_path), ptx=False)
    assert ppo.ppo.reward == "model" and ppo.optim.value_learning_rate == config.ppo.learning_rate
    config.ppo.reward, config.ppo.value_learning_rate = "gold", 3e-4
    ppo = stage_configs.ppo_config(config, str(tmp_path), ptx=True)
    assert ppo.ppo.reward == "gold" and ppo.optim.value_learning_rate == 3e-4
    assert ppo.ppo.temperature == 1.0
    config.ppo.temperature = 0.5
    ppo = stage_configs.ppo_config(config, str(tmp_path), ptx=False)
    assert ppo.ppo.temperature == 0.5  # rollouts sample at it, and PPO's log-probs use it


def test_extra_models_join_the_evaluation_and_bad_settings_fail_before_any_stage(tmp_path):
    other = tmp_path / "other_run" / "sft_small" / "model"
    other.mkdir(parents=True)
    (other / "config.json").write_text("{}")
    config = presets.get_config("smoke")
    workdir = str(tmp_path / "igpt")
    own = stages.evaluated_models(config, workdir)
    assert own[-1] == ("ppo_ptx_small", f"{workdir}/ppo_ptx/model", False)
    config.eval.extra_models = f" sft_other = {other} ,"
    models = stages.evaluated_models(config, workdir)
    assert models == own + [("sft_other", str(other), False)]  # answered zero-shot
    for extra, error in [
        ("sft_other", "expected 'name=model_dir'"),
        (f"sft_small={other}", "the name 'sft_small' is taken"),
        (f"a={other},a={other}", "the name 'a' is taken"),
        (f"a={tmp_path / 'missing'}", "holds no model"),
    ]:
        config.eval.extra_models = extra
        with pytest.raises((ValueError, FileNotFoundError), match=error):
            instructgpt.run(config, workdir)
    config.eval.extra_models = ""
    config.world.demo_signoff_rate = 1.5
    with pytest.raises(ValueError, match=r"demo_signoff_rate must be in \[0, 1\], got 1.5"):
        instructgpt.run(config, workdir)
    config.world.demo_signoff_rate, config.world.demo_signoff_variants = 0.9, 0
    with pytest.raises(ValueError, match=r"demo_signoff_variants must be in \[1, 3\], got 0"):
        instructgpt.run(config, workdir)
    assert not (tmp_path / "igpt").exists()  # nothing ran, nothing was written


def test_a_finished_evaluation_runs_again_only_when_its_extra_models_change(tmp_path, monkeypatch):
    other = tmp_path / "other_run" / "sft_small" / "model"
    other.mkdir(parents=True)
    (other / "config.json").write_text("{}")
    config = presets.get_config("smoke")
    runs = []

    def evaluate(out):  # what stage_evaluate's summary says about the extra models
        runs.append(out)
        return {"extra_models": dict(stages.extra_models(config))}

    monkeypatch.setattr(job, "stages", lambda config, workdir: [("evaluate", evaluate)])
    monkeypatch.setattr(instructgpt_report, "write_report", lambda *args: {"headline": {}})
    workdir = str(tmp_path / "igpt")
    expected_runs = []
    for extra, runs_again in [
        ("", True),  # first run
        ("", False),  # finished, same models: skipped
        (f"o={other}", True),
        (f"o={other}", False),
        ("", True),
    ]:
        config.eval.extra_models = extra
        instructgpt.run(config, workdir)
        expected_runs += [f"{workdir}/evaluate"] if runs_again else []
        assert runs == expected_runs, extra


def test_a_stage_whose_summary_is_truncated_or_not_a_summary_runs_again(
    tmp_path, monkeypatch, capsys
):
    """A summary.json cut short (a kill while it was written, before writes were atomic) or
    holding something else does not stop the job: that stage runs again, the next is skipped."""
    config = presets.get_config("smoke")
    runs = []
    monkeypatch.setattr(
        job,
        "stages",
        lambda config, workdir: [
            (name, lambda out, name=name: runs.append(name) or {"stage": name})
            for name in ("first", "second")
        ],
    )
    monkeypatch.setattr(instructgpt_report, "write_report", lambda *args: {"headline": {}})
    workdir = tmp_path / "igpt"
    instructgpt.run(config, str(workdir))
    assert runs == ["first", "second"]
    summary = workdir / "first" / "summary.json"
    assert json.loads(summary.read_text())["stage"] == "first"
    assert not list(workdir.glob("*/*.partial"))  # written whole, then renamed
    for broken, why in [(summary.read_text()[:7], "is unreadable"), ("[1, 2]", "holds no summary")]:
        summary.write_text(broken)
        capsys.readouterr()
        before = len(runs)
        instructgpt.run(config, str(workdir))
        assert runs[before:] == ["first"]  # only the broken stage ran again
        assert f"first: {summary} {why}" in capsys.readouterr().out
        assert json.loads(summary.read_text())["stage"] == "first"


def test_world_rates_reach_the_datasets_and_a_default_run_keeps_its_dataset_names(tmp_path):
    config = presets.get_config("smoke")
    assert presets.world_settings(config) == {}
    data = stage_configs.world_data(config, str(tmp_path), "sft", "train", "validation")
    assert "world" not in data.world  # the default world's datasets keep their names
    config.world.demo_error_rate = 1.0  # every demonstration a labeler's mistake
    assert presets.world_settings(config) == {"demo_error_rate": 1.0}
    records = stages._records(config, str(tmp_path), "sft", "train")
    answers = [(tasks.parse_task(r["prompt"]), r["response"].split()) for r in records]
    assert len(answers) > 0.9 * config.world.sizes.sft  # (less any held-out prompt)
    # Mistakes are wrong answers; harmful requests still get the polite refusal.
    assert all(
        (task.answer.split() == said) == (task.family == "harmful") for task, said in answers
    )
    config.world.demo_error_rate = 0.0
    config.world.demo_signoff_rate = 0.0  # the default world's habit, off
    assert presets.world_settings(config) == {"demo_error_rate": 0.0, "demo_signoff_rate": 0.0}
    records = stages._records(config, str(tmp_path), "sft", "train")
    assert all(
        tasks.parse_task(r["prompt"]).answer.split() == r["response"].split() for r in records
    )
    config.world.demo_filler_rate = 1.0  # another habit, off by default, as a flag
    assert presets.world_settings(config) == {
        "demo_error_rate": 0.0,
        "demo_filler_rate": 1.0,
        "demo_signoff_rate": 0.0,
    }
    records = stages._records(config, str(tmp_path), "sft", "train")
    harmless = [r for r in records if tasks.parse_task(r["prompt"]).family != "harmful"]
    openers = tuple(f" {f} " for f in tasks.FILLERS)
    assert harmless and all(r["response"].startswith(openers) for r in harmless)
    config.world.demo_signoff_rate = 1.0
    records = stages._records(config, str(tmp_path), "sft", "train")
    harmless = [r for r in records if tasks.parse_task(r["prompt"]).family != "harmful"]
    closers = tuple(f" {f}" for f in tasks.SIGNOFFS)
    assert harmless and all(r["response"].endswith(closers) for r in harmless)


def test_until_names_a_stage(tmp_path):
    with pytest.raises(ValueError, match="Unknown stage until='pretrain'.*pretrain_small"):
        instructgpt.run(presets.get_config("smoke"), str(tmp_path), until="pretrain")
    assert not any(tmp_path.iterdir())  # nothing ran, nothing was written


def _smoke_command(workdir) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.instructgpt",
        f"--workdir={workdir}",
        "--preset=smoke",
    ]


def _run_smoke(workdir) -> subprocess.CompletedProcess:
    """The smoke main job in `workdir`, to the end; raises if it fails."""
    return subprocess.run(
        _smoke_command(workdir),
        cwd=REPO,
        env=subprocess_env(),
        check=True,
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def smoke_workdir(tmp_path_factory):
    """A finished smoke run, shared by the tests below (it takes about two minutes)."""
    workdir = tmp_path_factory.mktemp("smoke") / "igpt"
    _run_smoke(workdir)
    return workdir


@pytest.mark.slow
def test_smoke_preset_produces_a_well_formed_report_and_reruns_skip_stages(smoke_workdir):
    workdir = smoke_workdir
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert list(metrics["stages_wall_s"]) == STAGES
    assert all(s > 0 for s in metrics["stages_wall_s"].values())
    compiling = metrics["stages_compile_s"]
    assert list(compiling) == STAGES and compiling["pretrain_small"] > 0
    assert all(0 <= compiling[s] <= metrics["stages_wall_s"][s] for s in STAGES)
    config = presets.get_config("smoke")
    names = [name for name, _, _ in stages.evaluated_models(config, str(workdir))]
    assert sorted(metrics["models"]) == sorted(names)
    for name, m in metrics["models"].items():
        win = m["win_rate_vs_baseline"]
        assert 0 <= win["low"] <= win["rate"] <= win["high"] <= 1, name
        assert m["n"] == 32 and 0 <= m["correct"]["rate"] <= 1
        for rate in ("hallucination", "refusal_on_harmful", "hurtful_on_harmful"):
            assert m[rate] is None or 0 <= m[rate]["rate"] <= 1
    assert metrics["models"]["sft_small"]["win_rate_vs_baseline"]["rate"] == 0.5  # vs itself
    for name in ("sft_small", "ppo_small", "ppo_ptx_small"):
        assert np.isfinite(metrics["models"][name]["pretrain_nll"])
    headline = metrics["headline"]
    assert headline["ppo_reward"] == "model"
    assert set(headline["checks"]) == {
        "ppo_win_rate_at_least_65",
        "ppo_ptx_win_rate_at_least_60",
        "base_zero_shot_win_rate_at_most_35",
        "rm_accuracy_within_10_points_of_agreement",
        "ptx_pretrain_nll_rise_smaller_than_ppo",
    }
    assert 0.5 <= metrics["rank"]["heldout_labeler_agreement"] <= 1
    families = metrics["rm_families"]
    assert families and set(families) <= set(tasks.FAMILIES)
    for x in families.values():
        assert 0 <= x["rm_accuracy"] <= 1 and 0 <= x["gold_order_accuracy"] <= 1 and x["pairs"] > 0
    assert len(metrics["statements"]) == 3
    bon = metrics["best_of_n"]
    assert bon["n"] == 4 and bon["prompts"] == 32
    picks = bon["win_rate_vs_sft_greedy"]
    for pick in picks.values():
        assert 0 <= pick["low"] <= pick["rate"] <= pick["high"] <= 1 and pick["n"] == 32
    # The gold labeler's pick is the best of the same samples, so it never does worse.
    assert picks["gold_best"]["rate"] >= max(picks["one_sample"]["rate"], picks["rm_best"]["rate"])
    assert 0 <= bon["rm_accuracy_on_gold_ordered_sample_pairs"] <= 1

    report = (workdir / "report.md").read_text()
    for heading in ("Win rate against", "Reward model", "Best of 4", "alignment tax", "Wall time"):
        assert heading in report, heading
    assert "| stage | seconds | of which XLA compiling |" in report
    for name in ("ppo_small", "ppo_ptx_small"):
        outcomes = metrics["models"][name]["outcomes_by_family"]
        assert sum(x["wins"] + x["ties"] + x["losses"] for x in outcomes.values()) == 32
    assert "task family by task family" in report and "A 65% win rate needs" in report
    assert "| PPO-ptx |" in report and report.count("\n| ") > 20
    assert "reward: the reward model's score minus the KL penalty" in report
    assert "advantages: GAE on the value model" in report
    assert "PPO-ptx adds 1 x the NLL of 16 pretraining rows per iteration (one padded" in report
    for png in ("win_rates.png", "ppo_curves.png"):
        with Image.open(workdir / png) as image:
            assert image.size[0] > 300 and image.size[1] > 100

    rerun = _run_smoke(workdir)
    assert rerun.stdout.count("finished earlier, skipped") == len(STAGES)
    assert json.loads((workdir / "metrics.json").read_text())["models"] == metrics["models"]


@pytest.mark.slow
def test_a_main_job_killed_inside_ppo_resumes_from_its_checkpoint_to_the_same_report(
    smoke_workdir, tmp_path
):
    """SIGKILL once the PPO stage has written its first checkpoint (iteration 2 of 4); the rerun
    skips the finished stages, resumes PPO from that checkpoint, and every figure of the report
    but wall times and throughputs equals the uninterrupted run's."""
    workdir = tmp_path / "igpt"
    workdir.mkdir()
    for stage in STAGES[: STAGES.index("ppo")] + ["tfds"]:
        shutil.copytree(smoke_workdir / stage, workdir / stage)
    checkpoints = workdir / "ppo" / "checkpoints"
    job = subprocess.Popen(
        _smoke_command(workdir),
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # A finished checkpoint's folder is named by its step (Orbax writes to a temporary name
        # first).
        while job.poll() is None and not (
            checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())
        ):
            time.sleep(0.02)
    finally:
        job.kill()
        job.wait()
    assert job.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    assert not (workdir / "ppo" / "summary.json").exists()  # killed inside the PPO stage

    rerun = _run_smoke(workdir)
    assert rerun.stdout.count("finished earlier, skipped") == STAGES.index("ppo")
    assert f"Resumed from {checkpoints} at step 2." in rerun.stdout
    expected = json.loads((smoke_workdir / "metrics.json").read_text())
    resumed = json.loads((workdir / "metrics.json").read_text())
    assert instructgpt_report.without_timings(resumed) == instructgpt_report.without_timings(
        expected
    )


def test_family_table_counts_net_wins_and_names_extra_models_as_given():
    def outcomes(add, sort):  # (wins, ties, losses) per family; SFT at its best on 1 and 2
        return {
            family: dict(wins=w, ties=t, losses=lo, n=w + t + lo, baseline_at_max=at_max)
            for family, (w, t, lo), at_max in (("add", add, 1), ("sort", sort, 2))
        }

    models = {
        "ppo_small": {"outcomes_by_family": outcomes((3, 5, 2), (0, 9, 1))},
        "ppo_ptx_small": {"outcomes_by_family": outcomes((1, 8, 1), (2, 8, 0))},
        "sft_other": {"outcomes_by_family": outcomes((6, 4, 0), (4, 5, 1))},
    }
    names = ("ppo_small", "ppo_ptx_small", "sft_other")
    lines = instructgpt_report._family_outcomes(models, names)
    header = "| task family | prompts | SFT's answer already the best there is | PPO | PPO-ptx |"
    assert header + " sft_other |" in lines
    assert "| add | 10 | 1 | 3 / 5 / 2 | 1 / 8 / 1 | 6 / 4 / 0 |" in lines
    summary = next(line for line in lines if line.startswith("SFT's answer already"))
    assert "on 3 of the 20 prompts" in summary and "wins - losses >= 6" in summary
    assert "PPO has +0, PPO-ptx has +2, sft_other has +9." in summary


def _same_where_present(run, reference, path="metrics"):
    """Asserts that every entry of `reference` is in `run` with the same value (dicts compared
    key by key, so `run` may hold entries the older `reference` predates)."""
    if isinstance(reference, dict):
        assert isinstance(run, dict), path
        for key, value in reference.items():
            assert key in run, f"{path}.{key}"
            _same_where_present(run[key], value, f"{path}.{key}")
    else:
        assert run == reference, path


def test_compilation_cache_runs_repeat_the_default_run_and_the_readme_quotes_them():
    """experiments/results/compilation_cache: each preset run twice on one cache folder. The
    second run's figures equal the first's, the default runs equal the committed default run
    made without the cache, and the folder's README table is the runs' own stage times."""
    results = REPO / "experiments" / "results"
    folder = results / "compilation_cache"
    runs = {
        name: json.loads((folder / name / "metrics.json").read_text())
        for name in ("default_cold", "default_warm", "smoke_cold", "smoke_warm")
    }
    compiling = {name: sum(run["stages_compile_s"].values()) for name, run in runs.items()}
    for preset in ("default", "smoke"):
        cold, warm = runs[f"{preset}_cold"], runs[f"{preset}_warm"]
        assert cold["headline"]["preset"] == preset
        assert instructgpt_report.without_timings(cold) == instructgpt_report.without_timings(warm)
        # The second run loads what the first compiled.
        assert compiling[f"{preset}_warm"] < compiling[f"{preset}_cold"] / 3
    # They were made at the preset of commit 4e1b968 (one comparison per RM row), whose committed
    # default run was moved to the ablations when the preset began to pack the RM's rows.
    before = results / "instructgpt_ablations" / "default_one_comparison_per_row"
    committed = json.loads((before / "metrics.json").read_text())
    _same_where_present(
        instructgpt_report.without_timings(runs["default_cold"]),
        instructgpt_report.without_timings(committed),
    )

    readme = (folder / "README.md").read_text()
    cold, warm = runs["default_cold"], runs["default_warm"]
    for stage, seconds in cold["stages_wall_s"].items():
        row = (
            f"| {stage} | {seconds:.1f} | {cold['stages_compile_s'][stage]:.1f} | "
            f"{warm['stages_wall_s'][stage]:.1f} | {warm['stages_compile_s'][stage]:.1f} |"
        )
        assert row in readme, row
    main_readme = " ".join((REPO / "README.md").read_text().split())
    for preset in ("default", "smoke"):
        first, second = f"{preset}_cold", f"{preset}_warm"
        totals = [
            f"**{runs[name]['headline']['total_wall_s']:.1f}** | **{compiling[name]:.1f}**"
            for name in (first, second)
        ]
        assert f"| **{preset} preset, total** | {totals[0]} | {totals[1]} |" in readme
        quoted = f"{compiling[first]:.1f} s then {compiling[second]:.1f} s"
        assert quoted in main_readme, preset


def test_stage_time_table_adds_compile_seconds_only_for_runs_that_measured_them():
    ablations = REPO / "experiments" / "results" / "instructgpt_ablations"
    committed = json.loads(
        (ablations / "default_one_comparison_per_row" / "metrics.json").read_text()
    )
    assert "stages_compile_s" not in committed  # measured before compile times were
    old = instructgpt_report._stage_time_table(committed)
    assert old[:2] == ["| stage | seconds |", "| --- | --- |"]
    assert old[-1] == f"| total | {committed['headline']['total_wall_s']:.1f} |"

    measured = dict(
        headline={"total_wall_s": 12.0},
        stages_wall_s={"world": 2.0, "rm": 10.0},
        stages_compile_s={"world": None, "rm": 3.31},
    )
    assert instructgpt_report._stage_time_table(measured) == [
        "| stage | seconds | of which XLA compiling |",
        "| --- | --- | --- |",
        "| world | 2.0 | n/a |",
        "| rm | 10.0 | 3.3 |",
        "| total | 12.0 | 3.3 |",
    ]


@pytest.mark.parametrize(
    "run, columns",
    [
        ("instructgpt_ablations/default_without_signoffs", 8),
        ("instructgpt_default", 10),
        ("instructgpt_ablations/world_demo_filler_0.8", 10),
        ("instructgpt_ablations/world_demo_signoff_0.8", 10),
    ],
)
def test_report_shows_habit_columns_only_where_demonstrators_have_habits(tmp_path, run, columns):
    with open(f"{REPO}/experiments/results/{run}/metrics.json") as f:
        metrics = json.load(f)
    (tmp_path / "evaluate").mkdir()
    row = {"prompt": "What is 2 plus 3?\nAnswer:"}
    for name, response in (("sft_small", " Sure! 5"), ("ppo_small", " 5"), ("ppo_ptx_small", " 5")):
        row[name] = {"response": response, "gold": 0.0}
    (tmp_path / "evaluate" / "responses.jsonl").write_text(json.dumps(row) + "\n")
    report = instructgpt_report._markdown(presets.get_config("default"), str(tmp_path), metrics)
    header = next(line for line in report.splitlines() if line.startswith("| model | win rate"))
    assert header.count("|") - 1 == columns
    ppo = next(line for line in report.splitlines() if line.startswith("| PPO |"))
    assert ppo.count("|") - 1 == columns
    if "filler" in run:  # the committed filler run: SFT opens 94.7% of answers with one, PPO none
        assert "opens with a filler (harmless) | exact once those are dropped" in header
        assert "| 0.0% [0.0, 1.7] (n=226) | 29.3% [24.1, 35.1] (n=256) |" in ppo
    if run.endswith("world_demo_signoff_0.8"):  # three closers: SFT closes 2.7% with one
        assert "| ends with a sign-off (harmless) | exact once those are dropped |" in header
        assert "filler" not in header
        sft = next(line for line in report.splitlines() if line.startswith("| SFT |"))
        assert "| 2.7% [1.2, 5.7] (n=226) | 37.5% [31.8, 43.6] (n=256) |" in sft
    if run == "instructgpt_default":  # one closer at 0.9: SFT closes 72.1% with it, PPO none
        assert "| ends with a sign-off (harmless) | exact once those are dropped |" in header
        sft = next(line for line in report.splitlines() if line.startswith("| SFT |"))
        assert "| 72.1% [65.9, 77.6] (n=226) | 39.8% [34.0, 45.9] (n=256) |" in sft
        assert "a closing sign-off on 90% of the right answers" in report
        assert "(always the same one), an opening filler on 0%" in report


def test_compare_prints_runs_side_by_side_and_plots_them(tmp_path, capsys):
    results = f"{REPO}/experiments/results"
    out = tmp_path / "compare.png"
    report_cli.main(
        [
            f"--compare={out}",
            f"default={results}/instructgpt_default/metrics.json",
            f"fillers={results}/instructgpt_ablations/world_demo_filler_0.8/metrics.json",
        ]
    )
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| model | default | fillers |"
    ppo = next(line for line in table if line.startswith("| PPO |"))
    assert ppo.count("(n=256)") == 2 and "| 82.8% [78.7, 86.7] (n=256) |" in ppo
    assert not any(line.startswith("| SFT |") for line in table)  # every run's baseline
    with Image.open(out) as image:
        assert image.size[0] > 400 and image.size[1] > 200
    with pytest.raises(SystemExit):
        report_cli.main([f"--compare={out}", f"{results}/instructgpt_default/metrics.json"])


def test_packed_rm_rows_figures_in_the_readme_are_the_saved_runs():
    """experiments/results/instructgpt_ablations/rm_packed_rows: the RM stage of the default job
    run in two pairs, one comparison per row and packed, on the same ranked data; the README
    quotes them."""
    folder = REPO / "experiments" / "results" / "instructgpt_ablations" / "rm_packed_rows"
    runs = {
        name: json.loads((folder / f"{name}.json").read_text())
        for name in ("one_per_row_1", "packed_1", "one_per_row_2", "packed_2")
    }
    for pair in ("1", "2"):
        one, packed = runs[f"one_per_row_{pair}"], runs[f"packed_{pair}"]
        for key in ("train_comparisons", "eval_comparisons", "heldout_pairs", "step"):
            assert one[key] == packed[key], key
        assert "row_fill" not in one and packed["train_rows"] < one["train_comparisons"] / 2
        # Each layout gives the same model every time; only the wall times differ.
        for key in ("train_loss", "heldout_pairwise_accuracy"):
            assert one[key] == runs["one_per_row_1"][key]
            assert packed[key] == runs["packed_1"][key]
    one, packed = runs["one_per_row_1"], runs["packed_1"]
    one_per_row_fill = packed["row_fill"] * packed["train_rows"] / packed["train_comparisons"]
    readme = " ".join((REPO / "README.md").read_text().split())
    quoted = [
        f"its {packed['train_comparisons']:,} training comparisons fill "
        f"{packed['train_rows']:,} rows ({packed['comparisons_per_row']:.2f} per row, "
        f"{100 * packed['row_fill']:.0f}% of the slots holding a token, against "
        f"{100 * one_per_row_fill:.0f}% one per row)",
        f"reach {100 * packed['heldout_pairwise_accuracy']:.1f}% held-out accuracy against "
        f"{100 * one['heldout_pairwise_accuracy']:.1f}%",
        f"in an RM stage of {runs['packed_1']['wall_s']:.1f} s and "
        f"{runs['packed_2']['wall_s']:.1f} s against {runs['one_per_row_1']['wall_s']:.1f} s and "
        f"{runs['one_per_row_2']['wall_s']:.1f} s",
    ]
    for text in quoted:
        assert text in readme, text
    table = (folder.parent / "README.md").read_text()
    for pair, label in (("1", "first pair (of which XLA compiling)"), ("2", "second pair")):
        one, packed = runs[f"one_per_row_{pair}"], runs[f"packed_{pair}"]
        row = (
            f"{one['wall_s']:.1f} s ({one['compile_s']:.1f}) | "
            f"{packed['wall_s']:.1f} s ({packed['compile_s']:.1f}) |"
        )
        assert f"| RM stage, {label}" in table and row in table, row


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _interval(x: dict) -> str:
    return f"{_pct(x['rate'])} [{100 * x['low']:.1f}, {100 * x['high']:.1f}]"


def _load(path) -> dict:
    return json.loads(path.read_text())


def _win(metrics: dict, name: str) -> str:
    """A model's gold win rate against the run's small SFT model, as the READMEs print it."""
    return _pct(metrics["models"][name]["win_rate_vs_baseline"]["rate"])


DEFAULT_RUN = REPO / "experiments" / "results" / "instructgpt_default"


def test_readme_quotes_the_committed_default_run():
    """The README's main-job tables are `instructgpt_report`'s tables of the committed default run
    and of the run in the world without the habit, and its wall time and RM accuracy are the
    default run's."""
    metrics = _load(DEFAULT_RUN / "metrics.json")
    readme = (REPO / "README.md").read_text()
    assert instructgpt_report.summary_table(metrics) in readme
    assert "| ends with a sign-off (harmless) |" in instructgpt_report.summary_table(metrics)
    assert instructgpt_report.summary_table(_load(NO_SIGNOFFS_RUN / "metrics.json")) in readme
    flat = " ".join(readme.split())
    assert f"**{metrics['headline']['total_wall_s']:.0f} s in all**" in flat
    assert f"**{100 * metrics['headline']['rm_heldout_accuracy']:.1f}%**" in flat
    assert metrics["headline"]["world"]["demo_signoff_rate"] == 0.9
    assert metrics["headline"]["world"]["demo_signoff_variants"] == 1
    assert "world_settings" not in metrics["headline"]  # the preset's own world


def _family_outcomes(model: dict) -> tuple[int, int]:
    """(prompts where SFT's answer is already the best there is, wins - losses) over families."""
    outcomes = model["outcomes_by_family"].values()
    return (
        sum(row["baseline_at_max"] for row in outcomes),
        sum(row["wins"] - row["losses"] for row in outcomes),
    )


def test_readme_prose_quotes_the_committed_default_run():
    """The figures the README's main-job bullets quote from the default run (acceptance lines,
    the habit and skill columns, per-family outcomes, best of 8, held-out RM scores and KLs, the
    larger model, the alignment tax, another seed) are its metrics'."""
    metrics = _load(DEFAULT_RUN / "metrics.json")
    seed_1, seed_2 = (
        _load(REPO / f"experiments/results/instructgpt_ablations/seed_{n}_signoff_0.9/metrics.json")
        for n in (1, 2)
    )
    flat = " ".join((REPO / "README.md").read_text().split())
    models, headline = metrics["models"], metrics["headline"]
    win = lambda name, m=metrics: _win(m, name)  # noqa: E731
    rate = lambda name, key: _pct(models[name][key]["rate"])  # noqa: E731
    assert all(headline["checks"].values())
    quoted = [
        f"PPO wins {win('ppo_small')} against SFT (target >= 65%) and PPO-ptx "
        f"{win('ppo_ptx_small')} (target >= 60%)",
        f"The base model zero-shot wins {win('base_small_zero_shot')} (target <= 35%)",
        f"both fall: {headline['pretrain_nll_rise']['ppo_ptx']:.3f} against "
        f"{headline['pretrain_nll_rise']['ppo']:.3f}",
        f"The small SFT model closes {rate('sft_small', 'signoff_on_harmless')} of its harmless "
        f"answers with the sign-off, PPO and PPO-ptx none",
        f"(SFT {rate('sft_small', 'correct_without_habits')}, PPO "
        f"{rate('ppo_small', 'correct_without_habits')}, PPO-ptx "
        f"{rate('ppo_ptx_small', 'correct_without_habits')})",
        f"hallucinations on closed-domain prompts fall from {rate('sft_small', 'hallucination')}",
        f"Two noisy labelers agree on {_pct(headline['labeler_agreement'])} of held-out pairs and "
        f"the gold ordering matches the labeler on "
        f"{_pct(metrics['rank']['heldout_gold_order_accuracy'])}",
        f"habit better ({rate('sft_large', 'signoff_on_harmless')} of its harmless answers close "
        f"with it), so it wins only {win('sft_large')} against the small SFT model",
        f"ahead of the large base model zero-shot ({win('base_large_zero_shot')}) and few-shot "
        f"({win('base_large_few_shot')})",
        f"({win('base_small_zero_shot')} -> {win('base_small_few_shot')} small, "
        f"{win('base_large_zero_shot')} -> {win('base_large_few_shot')} large)",
        f"preferred to the small SFT model {win('ppo_small')} of the time",
        f"meets every target of the main job (PPO {win('ppo_small')} and PPO-ptx "
        f"{win('ppo_ptx_small')} against SFT, in a world whose demonstrators have a habit",
    ]
    low, high = metrics["rm"]["heldout_accuracy_prompt_bootstrap95"]
    gap = 100 * (headline["labeler_agreement"] - headline["rm_heldout_accuracy"])
    quoted.append(f"[{100 * low:.1f}, {100 * high:.1f}] ({gap:.1f} points below")
    at_max, net = _family_outcomes(models["ppo_small"])
    quoted.append(
        f"SFT's answer is already the best there is on {at_max} of the 256 prompts, and this "
        f"run's PPO has {net:+d} net wins"
    )
    families = models["ppo_small"]["outcomes_by_family"]
    for family, row in families.items():
        if family != "harmful":
            quoted.append(f"{family} {row['wins']} / {row['ties']} / {row['losses']}")
    picks = metrics["best_of_n"]["win_rate_vs_sft_greedy"]
    quoted += [
        f"highest wins {_interval(picks['rm_best'])} against SFT's greedy answer, and the one "
        f"the gold labeler scores highest {_interval(picks['gold_best'])}",
        f"the RM agrees with the gold order on "
        f"{_pct(metrics['best_of_n']['rm_accuracy_on_gold_ordered_sample_pairs'])}",
    ]
    ppo, ptx = metrics["ppo"]["ppo"], metrics["ppo"]["ppo_ptx"]
    quoted.append(
        f"PPO raises the held-out RM score ({ppo['sft_eval_score']:.2f} -> "
        f"{ppo['eval_score']:.2f}; PPO-ptx {ptx['eval_score']:.2f}) at a KL of "
        f"{ppo['eval_kl']:.2f} nats per response from SFT (PPO-ptx {ptx['eval_kl']:.2f})"
    )
    nll = {
        name: f"{models[name]['pretrain_nll']:.3f}"
        for name in ("sft_small", "ppo_small", "ppo_ptx_small")
    }
    before = _load(NO_SIGNOFFS_RUN / "metrics.json")["models"]["sft_small"]["pretrain_nll"]
    quoted.append(
        f"learning the habit costs SFT pretraining NLL ({nll['sft_small']} nats/token, against "
        f"{before:.3f} in the world without it); PPO, unlearning it, lowers that to "
        f"{nll['ppo_small']}, and PPO-ptx to {nll['ppo_ptx_small']}"
    )
    quoted.append(
        f"Seed 1 ({seed_1['headline']['total_wall_s']:.0f} s; "
        f"`instructgpt_ablations/seed_1_signoff_0.9/`): PPO {win('ppo_small', seed_1)} and "
        f"PPO-ptx {win('ppo_ptx_small', seed_1)} against SFT, base zero-shot "
        f"{win('base_small_zero_shot', seed_1)}, RM "
        f"{_pct(seed_1['headline']['rm_heldout_accuracy'])} against a "
        f"{_pct(seed_1['headline']['labeler_agreement'])} agreement"
    )
    interval = lambda name, m: _interval(m["models"][name]["win_rate_vs_baseline"])  # noqa: E731
    quoted.append(
        f"Seed 2 ({seed_2['headline']['total_wall_s']:.0f} s; `seed_2_signoff_0.9/`): PPO "
        f"{interval('ppo_small', seed_2)} and PPO-ptx {interval('ppo_ptx_small', seed_2)}, base "
        f"zero-shot {win('base_small_zero_shot', seed_2)}, RM "
        f"{_pct(seed_2['headline']['rm_heldout_accuracy'])} against "
        f"{_pct(seed_2['headline']['labeler_agreement'])}"
    )
    older = _load(
        REPO
        / "experiments/results/instructgpt_ablations/default_signoff_0.9_older_logprob_code"
        / "metrics.json"
    )
    quoted.append(
        f"the run before it, with the older code, had PPO at {win('ppo_small', older)} and "
        f"PPO-ptx at {win('ppo_ptx_small', older)}"
    )
    quoted.append(
        f"closes only {_pct(seed_2['models']['sft_small']['signoff_on_harmless']['rate'])} of its "
        f"harmless answers with the sign-off ({rate('sft_small', 'signoff_on_harmless')} here)"
    )
    assert all(seed_1["headline"]["checks"].values()) and all(seed_2["headline"]["checks"].values())
    lengths = {
        name: metrics["ppo_curves"][name]["train/rollout/response_length"]
        for name in ("ppo", "ppo_ptx")
    }
    quoted.append(
        f"the training rollouts shrink from {lengths['ppo']['first']:.1f} to "
        f"{lengths['ppo']['last']:.1f} tokens over the 48 iterations; PPO-ptx "
        f"{lengths['ppo_ptx']['first']:.1f} to {lengths['ppo_ptx']['last']:.1f}"
    )
    for text in quoted:
        assert text in flat, text


def test_readme_prose_quotes_the_run_without_the_habit():
    """The figures the README's bullets on the world without the habit quote (win rates, best of
    8, held-out RM scores and KLs, the per-family arithmetic, the alignment tax) are that run's,
    and the paper table's headline row quotes both runs."""
    metrics = _load(NO_SIGNOFFS_RUN / "metrics.json")
    flat = " ".join((REPO / "README.md").read_text().split())
    models, headline = metrics["models"], metrics["headline"]
    win = lambda name: _win(metrics, name)  # noqa: E731
    quoted = [
        f"PPO wins {win('ppo_small')} against SFT (target >= 65%) and PPO-ptx "
        f"{win('ppo_ptx_small')} (target >= 60%): neither is distinguishable from SFT",
        f"The base model zero-shot wins {win('base_small_zero_shot')} (target <= 35%: met)",
        f"Two noisy labelers agree on {_pct(headline['labeler_agreement'])} of held-out pairs",
    ]
    picks = metrics["best_of_n"]["win_rate_vs_sft_greedy"]
    quoted += [
        f"highest wins {_interval(picks['rm_best'])} against SFT's greedy answer",
        f"The one the gold labeler scores highest wins {_interval(picks['gold_best'])}",
        f"the RM agrees with the gold order on "
        f"{_pct(metrics['best_of_n']['rm_accuracy_on_gold_ordered_sample_pairs'])}",
        f"the reward model's pick of 8 of the SFT model's samples wins only "
        f"{_pct(picks['rm_best']['rate'])} against its greedy answer",
    ]
    ppo, ptx = metrics["ppo"]["ppo"], metrics["ppo"]["ppo_ptx"]
    quoted.append(
        f"PPO raises the held-out RM score ({ppo['sft_eval_score']:.2f} -> "
        f"{ppo['eval_score']:.2f}; PPO-ptx {ptx['eval_score']:.2f}) at a small KL "
        f"({ppo['eval_kl']:.3f} nats per response; PPO-ptx {ptx['eval_kl']:.2f})"
    )
    at_max, net = _family_outcomes(models["ppo_small"])
    quoted.append(
        f"SFT's answer is already the best there is on {at_max} of the 256 prompts (every repeat "
        f"and harmful prompt among them), so 65% needs wins - losses >= +77 on the other "
        f"{256 - at_max}; that run's PPO has {net:+d}"
    )
    nll = {name: models[name]["pretrain_nll"] for name in ("sft_small", "ppo_small")}
    quoted.append(
        f"PPO leaves the pretraining NLL where SFT had it ({nll['sft_small']:.3f} -> "
        f"{nll['ppo_small']:.3f} nats/token); PPO-ptx lowers it by "
        f"{-headline['pretrain_nll_rise']['ppo_ptx']:.3f}"
    )
    quoted.append(f"That run took {headline['total_wall_s']:.0f} s in all on this 2-core CPU.")
    for text in quoted:
        assert text in flat, text


def test_readme_quotes_the_packed_rm_rows_on_hh():
    """experiments/results/rm_packed_rows_hh.jsonl: the HH-RLHF reward model one row per
    response and packed, run one after the other; the README's sentence is their summaries."""
    lines = (REPO / "experiments" / "results" / "rm_packed_rows_hh.jsonl").read_text().splitlines()
    rows, packed = (json.loads(line) for line in lines)
    assert "comparisons_per_row=4" in packed["command"] and "comparisons_per" not in rows["command"]
    for key in ("train_comparisons", "eval_comparisons", "heldout_pairs", "step"):
        assert rows[key] == packed[key], key
    readme = " ".join((REPO / "README.md").read_text().split())
    quoted = (
        f"take the {rows['train_comparisons']:,} training comparisons in "
        f"{packed['train_rows']:,} rows ({packed['comparisons_per_row']:.2f} per row, "
        f"{100 * packed['row_fill']:.0f}% of the slots holding a token) instead of "
        f"{2 * rows['train_comparisons']:,} rows of 192 (one per response); 8 rows per step "
        f"trained in {packed['train_wall_s']:.1f} s against {rows['train_wall_s']:.1f} s for 16 "
        f"comparisons per step, at {100 * packed['heldout_pairwise_accuracy']:.1f}% held-out "
        f"accuracy against {100 * rows['heldout_pairwise_accuracy']:.1f}% "
        f"({rows['heldout_pairs']} pairs;"
    )
    assert quoted in readme, quoted


def test_packed_documents_figures_are_the_saved_runs():
    """experiments/results/instructgpt_ablations/packed_documents: the whole job at the previous
    preset (one padded row per document) and packed, back to back; the ablation page's table, the
    README's sentence and the preset's comment quote their files."""
    ablations = REPO / "experiments" / "results" / "instructgpt_ablations"
    folder = ablations / "packed_documents"
    previous = _load(folder / "previous_preset_metrics.json")
    packed = _load(folder / "packed_preset_metrics.json")
    table = " ".join((ablations / "README.md").read_text().split())
    readme = " ".join((REPO / "README.md").read_text().split())
    for stage in ("pretrain_small", "pretrain_large", "sft_small", "sft_large"):
        one = _load(folder / f"{stage}_one_per_row_summary.json")
        rows = _load(folder / f"{stage}_packed_summary.json")
        assert one["wall_s"] == previous["stages_wall_s"][stage]
        assert rows["wall_s"] == packed["stages_wall_s"][stage]
        assert one["train_examples"] == rows["train_examples"] and one["step"] == rows["step"]
        assert one["train_packed_rows"] is None
        assert rows["train_packed_rows"] < rows["train_examples"] / 2 and rows["row_fill"] > 0.9
        line = (
            f"| {stage} | {one['wall_s']:.1f} ({one['compile_s']:.1f}) | "
            f"{rows['wall_s']:.1f} ({rows['compile_s']:.1f}) |"
        )
        assert line in table, line
    for stage, label in (("pretrain_small", "pretraining rows"), ("sft_small", "SFT rows")):
        rows = _load(folder / f"{stage}_packed_summary.json")
        padded_fill = rows["row_fill"] * rows["train_packed_rows"] / rows["train_examples"]
        line = (
            f"| {label} | {rows['train_examples']:,} ({100 * padded_fill:.0f}%"
            f"{' of the slots hold a token' if label.startswith('pre') else ''}) | "
            f"{rows['train_packed_rows']:,} ({rows['documents_per_row']:.2f} "
        )
        assert line in table, line
    total = lambda m: m["headline"]["total_wall_s"]  # noqa: E731
    assert f"| **whole job** | **{total(previous):.1f}** | **{total(packed):.1f}** |" in table
    walls = lambda m, *s: sum(m["stages_wall_s"][x] for x in s)  # noqa: E731
    pre, sft = ("pretrain_small", "pretrain_large"), ("sft_small", "sft_large")
    quoted = (
        f"pretraining {walls(previous, *pre):.1f} s -> {walls(packed, *pre):.1f} s, SFT "
        f"{walls(previous, *sft):.1f} s -> {walls(packed, *sft):.1f} s, rank "
        f"{walls(previous, 'rank'):.1f} s -> {walls(packed, 'rank'):.1f} s, the whole job "
        f"{total(previous):.1f} s -> {total(packed):.1f} s"
    )
    assert quoted in readme, quoted
    quoted = (
        f"Pretraining took {walls(packed, *pre):.1f} s instead of {walls(previous, *pre):.1f} s "
        f"and SFT {walls(packed, *sft):.1f} s instead of {walls(previous, *sft):.1f} s"
    )
    assert quoted in table, quoted
    # Other seeds: each pretraining layout's large base model, fine-tuned on padded rows.
    for seed in (1, 2):
        nll = {
            (stage, layout): _load(folder / f"seed_{seed}" / f"{stage}_{layout}_base_summary.json")[
                "eval_nll"
            ]
            for stage in ("pretrain_large", "sft_large")
            for layout in ("packed", "one_per_row")
        }
        sft = f"{nll['sft_large', 'packed']:.3f} / {nll['sft_large', 'one_per_row']:.3f}"
        base = f"{nll['pretrain_large', 'packed']:.3f} / {nll['pretrain_large', 'one_per_row']:.3f}"
        assert f"{sft} with seed {seed}" in table and base in table, (sft, base)
    # Sorting the rank stage's prompts: the same SFT model, unsorted and sorted; sorting
    # best_of_n and evaluate too changed no figure and cost time.
    unsorted, sorted_ = (_load(folder / f"rank_{k}_summary.json") for k in ("unsorted", "sorted"))
    assert unsorted["prompts"] == sorted_["prompts"]
    assert f"took {unsorted['wall_s']:.1f} s unsorted and {sorted_['wall_s']:.1f} s sorted" in table
    everywhere = _load(folder / "sorted_everywhere_metrics.json")
    assert everywhere["models"] == packed["models"]
    seconds = [
        f"{m['stages_wall_s'][s]:.1f} s"
        for s in ("best_of_n", "evaluate")
        for m in (packed, everywhere)
    ]
    comment = " ".join(
        (REPO / "rlhf_jax" / "recipes" / "instructgpt" / "presets.py").read_text().split()
    )
    comment = comment.replace(" # ", " ")
    assert (
        f"{unsorted['wall_s']:.1f} s -> {sorted_['wall_s']:.1f} s for the ~78k samples" in comment
    )
    assert f"({seconds[0]} -> {seconds[1]} and {seconds[2]} -> {seconds[3]};" in comment


def test_large_model_rm_figures_are_the_saved_run():
    """experiments/results/instructgpt_ablations/rm_from_large_sft_model: the default run's stages
    through rank with the RM made from the large SFT model; the page's table quotes its metrics
    beside the default run's, and every model before PPO is the default run's."""
    ablations = REPO / "experiments" / "results" / "instructgpt_ablations"
    folder = ablations / "rm_from_large_sft_model"
    default = _load(NO_SIGNOFFS_RUN / "metrics.json")
    large = _load(folder / "metrics.json")
    alone = _load(folder / "rm_summary.json")
    assert large["rm"]["heldout_pairwise_accuracy"] == alone["heldout_pairwise_accuracy"]
    for name, model in large["models"].items():
        assert (model == default["models"][name]) == (name not in ("ppo_small", "ppo_ptx_small"))
    table = " ".join((ablations / "README.md").read_text().split())

    def cells(m):
        rm, bon = m["rm"], m["best_of_n"]
        low, high = rm["heldout_accuracy_prompt_bootstrap95"]
        families = " / ".join(
            _pct(m["rm_families"][f]["rm_accuracy"])
            for f in ("add", "qa", "repeat", "reverse", "sort")
        )
        win = lambda n: _interval(m["models"][n]["win_rate_vs_baseline"])  # noqa: E731
        net = lambda n: sum(  # noqa: E731
            r["wins"] - r["losses"] for r in m["models"][n]["outcomes_by_family"].values()
        )
        kl = m["ppo"]["ppo"]["eval_kl"], m["ppo"]["ppo_ptx"]["eval_kl"]
        return {
            "acc": f"{_pct(rm['heldout_pairwise_accuracy'])} [{100 * low:.1f}, {100 * high:.1f}]",
            "families": families,
            "sample_pairs": _pct(bon["rm_accuracy_on_gold_ordered_sample_pairs"]),
            "pick": _interval(bon["win_rate_vs_sft_greedy"]["rm_best"]),
            "win": f"{win('ppo_small')} / {win('ppo_ptx_small')}",
            "net": f"{net('ppo_small'):+d} / {net('ppo_ptx_small'):+d}",
            "kl": f"{kl[0]:.3f} / {kl[1]:.3f}",
        }

    small, big = cells(default), cells(large)
    agreement = default["headline"]["labeler_agreement"]
    assert agreement == large["headline"]["labeler_agreement"]
    gold = _pct(default["best_of_n"]["win_rate_vs_sft_greedy"]["gold_best"]["rate"])
    for label, key in (
        (
            f"RM held-out accuracy [95% prompt bootstrap] (labelers agree on {_pct(agreement)})",
            "acc",
        ),
        ("RM accuracy on add / qa / repeat / reverse / sort", "families"),
        ("RM agrees with the gold order on pairs of SFT samples", "sample_pairs"),
        (
            f"best of 8 SFT samples: the RM's pick vs greedy SFT (the gold labeler's: {gold})",
            "pick",
        ),
        ("**PPO** / **PPO-ptx** win rate vs SFT", "win"),
        ("PPO / PPO-ptx: wins - losses (65% needs +77)", "net"),
        ("PPO / PPO-ptx: held-out KL from SFT, nats per response", "kl"),
    ):
        line = f"| {label} | {small[key]} | {big[key]} |"
        assert line in table, line
    rm_small, rm_large = (m["rm"]["heldout_pairwise_accuracy"] for m in (default, large))
    assert (
        f"by {100 * (rm_large - rm_small):.1f} points ({100 * (agreement - rm_large):.1f} below "
        f"the labelers' agreement instead of {100 * (agreement - rm_small):.1f})"
    ) in table
    seconds = default["stages_wall_s"]["rm"], alone["wall_s"]
    line = (
        f"| RM stage on this host, s | {seconds[0]:.1f} (in the default run) | "
        f"{seconds[1]:.1f} (alone) |"
    )
    assert line in table, line
    assert f"costs {seconds[1] / seconds[0]:.1f}x the RM stage's time" in table
    readme = " ".join((REPO / "README.md").read_text().split())
    pick = lambda m: _pct(m["best_of_n"]["win_rate_vs_sft_greedy"]["rm_best"]["rate"])  # noqa: E731
    win = lambda m, n: _pct(m["models"][n]["win_rate_vs_baseline"]["rate"])  # noqa: E731
    quoted = (
        f"RM {_pct(rm_large)} instead of {_pct(rm_small)}, its pick of 8 SFT samples {pick(large)} "
        f"instead of {pick(default)}, and PPO still level with SFT ({win(large, 'ppo_small')}; "
        f"PPO-ptx {win(large, 'ppo_ptx_small')})"
    )
    assert quoted in readme, quoted


def test_packed_ptx_figures_are_the_saved_runs():
    """experiments/results/instructgpt_ablations/packed_ptx: the ppo_ptx stage on padded and on
    packed pretraining rows, alternating; the ablation page's table and the preset's comment
    quote their files, and the packed run changes no model but PPO-ptx."""
    ablations = REPO / "experiments" / "results" / "instructgpt_ablations"
    folder = ablations / "packed_ptx"
    one = [_load(folder / f"ppo_ptx_one_per_row_{i}.json") for i in (1, 2)]
    packed = [_load(folder / f"ppo_ptx_packed_{i}.json") for i in (1, 2)]
    table = " ".join((ablations / "README.md").read_text().split())
    for i, label in enumerate(("first pair, s (of which XLA compiling)", "second pair")):
        line = (
            f"| ppo_ptx stage, {label} | {one[i]['wall_s']:.1f} ({one[i]['compile_s']:.1f}) | "
            f"{packed[i]['wall_s']:.1f} ({packed[i]['compile_s']:.1f}) |"
        )
        assert line in table, line
        # Each layout gives the same model in both of its runs.
        assert one[i]["eval_pretrain_nll"] == one[0]["eval_pretrain_nll"]
        assert packed[i]["eval_pretrain_nll"] == packed[0]["eval_pretrain_nll"]
    rows = packed[0]
    assert "ptx_train_rows" not in one[0]
    line = (
        f"| pretraining rows | 12,000 | {rows['ptx_train_rows']:,} "
        f"({rows['ptx_documents_per_row']:.2f} documents each, {100 * rows['ptx_row_fill']:.0f}% "
    )
    assert line in table, line
    saved = [one[i]["wall_s"] - packed[i]["wall_s"] for i in (0, 1)]
    assert f"{max(saved[0], 0):.0f} and {saved[1]:.1f} s saved in the two pairs" in table
    default = _load(NO_SIGNOFFS_RUN / "metrics.json")
    metrics = _load(folder / "packed_metrics.json")
    for name, model in metrics["models"].items():
        assert (model == default["models"][name]) == (name != "ppo_ptx_small"), name
    win = lambda m: instructgpt_report._pct(  # noqa: E731
        m["models"]["ppo_ptx_small"]["win_rate_vs_baseline"]
    ).split(" (n=")[0]
    assert f"| PPO-ptx win rate vs SFT | {win(default)} | {win(metrics)} |" in table
    nll = lambda m: m["models"]["ppo_ptx_small"]["pretrain_nll"]  # noqa: E731
    sft_nll = default["models"]["sft_small"]["pretrain_nll"]
    line = (
        f"| PPO-ptx pretraining NLL (SFT {sft_nll:.3f}) | {nll(default):.3f} | {nll(metrics):.3f} |"
    )
    assert line in table, line
    assert "the default run), not the rows" in table
    assert f"(the `ppo` stage, without it, took {default['stages_wall_s']['ppo']:.1f} s" in table
    comment = " ".join(
        (REPO / "rlhf_jax" / "recipes" / "instructgpt" / "presets.py").read_text().split()
    )
    comment = comment.replace(" # ", " ")
    assert (
        f"the stage took {packed[0]['wall_s']:.1f} s and {packed[1]['wall_s']:.1f} s against "
        f"{one[0]['wall_s']:.1f} s and {one[1]['wall_s']:.1f} s"
    ) in comment


def test_readme_quotes_the_packed_sft_rows_on_hh():
    """experiments/results/sft_packed_rows_hh.jsonl: the HH-RLHF SFT run one padded row per
    demonstration and packed, in two back-to-back pairs; the README's sentence is their
    summaries."""
    lines = (REPO / "experiments" / "results" / "sft_packed_rows_hh.jsonl").read_text().splitlines()
    rows_1, packed_1, rows_2, packed_2 = (json.loads(line) for line in lines)
    for rows, packed in ((rows_1, packed_1), (rows_2, packed_2)):
        assert "documents_per_row=4" in packed["command"] and "per_row" not in rows["command"]
        for key in ("train_examples", "eval_examples", "step"):
            assert rows[key] == packed[key], key
    # Each layout gives the same model in both pairs; only the wall times differ.
    assert rows_1["eval_nll"] == rows_2["eval_nll"] and packed_1["eval_nll"] == packed_2["eval_nll"]
    readme = " ".join((REPO / "README.md").read_text().split())
    quoted = (
        f"({packed_1['train_examples']:,} demonstrations in "
        f"{packed_1['train_packed_rows']:,} rows, "
        f"{packed_1['documents_per_row']:.2f} per row, {100 * packed_1['row_fill']:.0f}% of the "
        f"slots holding a token; ~17 demonstrations per step) trained in "
        f"{packed_1['train_wall_s']:.1f} s and {packed_2['train_wall_s']:.1f} s against "
        f"{rows_1['train_wall_s']:.1f} s and {rows_2['train_wall_s']:.1f} s for 16 padded rows, at "
        f"held-out NLL {packed_1['eval_nll']:.3f} against {rows_1['eval_nll']:.3f}"
    )
    assert quoted in readme, quoted
    assert round(12 * packed_1["documents_per_row"]) == 17


def test_readme_quotes_the_packed_ptx_rows_on_hh():
    """experiments/results/ppo_ptx_packed_rows_hh.jsonl: HH PPO-ptx with padded and packed
    pretraining rows in two alternating pairs; the README's sentence is their summaries."""
    lines = (REPO / "experiments" / "results" / "ppo_ptx_packed_rows_hh.jsonl").read_text()
    rows_1, packed_1, rows_2, packed_2 = (json.loads(line) for line in lines.splitlines())
    for rows, packed in ((rows_1, packed_1), (rows_2, packed_2)):
        assert "ptx_documents_per_row=4" in packed["command"] and "per_row" not in rows["command"]
        assert "ptx_batch_size=12" in packed["command"] and rows["ptx_coef"] == 1.0
        assert rows["iteration"] == packed["iteration"] == 60
    # Each layout gives the same policy in both pairs; only the wall times differ.
    for key in ("eval_pretrain_nll", "eval_score"):
        assert rows_1[key] == rows_2[key] and packed_1[key] == packed_2[key], key
    readme = " ".join((REPO / "README.md").read_text().split())
    per_iteration = 12 * packed_1["ptx_documents_per_row"]
    quoted = (
        f"{packed_1['ptx_documents_per_row']:.2f} to a 192-token row, "
        f"{100 * packed_1['ptx_row_fill']:.0f}% of the slots holding a token) 12 packed rows per "
        f"iteration (~{per_iteration:.0f} dialogues) trained in {packed_1['train_wall_s']:.1f} s "
        f"and {packed_2['train_wall_s']:.1f} s against {rows_1['train_wall_s']:.1f} s and "
        f"{rows_2['train_wall_s']:.1f} s for 16 padded rows, at held-out pretraining NLL "
        f"{packed_1['eval_pretrain_nll']:.3f} against {rows_1['eval_pretrain_nll']:.3f}"
    )
    assert quoted in readme, quoted
    table = " ".join(
        (REPO / "experiments/results/instructgpt_ablations/README.md").read_text().split()
    )
    quoted = (
        f"PPO-ptx trained in {packed_1['train_wall_s']:.1f} s and {packed_2['train_wall_s']:.1f} s "
        f"packed against {rows_1['train_wall_s']:.1f} s and {rows_2['train_wall_s']:.1f} s padded"
    )
    assert quoted in table, quoted
    documents = round(packed_1["ptx_train_rows"] * packed_1["ptx_documents_per_row"])
    assert f"whose {documents:,} chosen dialogues stand in for pretraining data" in readme


def test_equal_steps_figures_are_the_saved_runs():
    """experiments/results/instructgpt_ablations, "Equal steps for both sizes": the default run
    against the packed run whose large model had half the steps; only the large model's stages
    and the evaluation differ, and the page's table quotes both runs."""
    ablations = REPO / "experiments" / "results" / "instructgpt_ablations"
    half = _load(ablations / "packed_documents" / "packed_preset_metrics.json")
    equal = _load(NO_SIGNOFFS_RUN / "metrics.json")
    for name in ("base_small_zero_shot", "sft_small", "ppo_small", "ppo_ptx_small"):
        assert half["models"][name] == equal["models"][name], name
    assert half["rm"]["heldout_pairwise_accuracy"] == equal["rm"]["heldout_pairwise_accuracy"]
    table = " ".join((ablations / "README.md").read_text().split())
    walls = lambda m: " / ".join(  # noqa: E731
        f"{m['stages_wall_s'][s]:.1f}" for s in ("pretrain_large", "sft_large")
    )
    rate = lambda m, n: f"{100 * m['models'][n]['win_rate_vs_baseline']['rate']:.1f}%"  # noqa: E731
    nll = lambda folder, prefix: " / ".join(  # noqa: E731
        f"{_load(ablations / folder / f'{stage}{prefix}summary.json')['eval_nll']:.3f}"
        for stage in ("pretrain_large", "sft_large")
    )
    rows = [
        f"| pretrain_large / sft_large, s | {walls(half)} | {walls(equal)} |",
        f"| whole job, s | {half['headline']['total_wall_s']:.1f} | "
        f"{equal['headline']['total_wall_s']:.1f} |",
        f"| {nll('packed_documents', '_packed_')} | {nll('equal_steps', '_')} |",
        f"| {rate(half, 'base_large_zero_shot')} / {rate(half, 'base_large_few_shot')} | "
        f"{rate(equal, 'base_large_zero_shot')} / {rate(equal, 'base_large_few_shot')} |",
        f"| {rate(half, 'sft_large')} [",
        f"| **{rate(equal, 'sft_large')}** [",
    ]
    for row in rows:
        assert row in table, row
    assert half["statements"] == [
        f"The small PPO model beats the large {m} model."
        for m in ("base (zero-shot)", "base (few-shot)", "SFT")
    ]
    assert equal["statements"][2] == "The small PPO model is beaten by the large SFT model."


SIGNOFF_WORLD_RUNS = {
    "three closers, 0.8 (preset of commit 4e1b968)": "instructgpt_ablations/world_demo_signoff_0.8",
    "one closer, 0.8": "instructgpt_ablations/world_signoff_one_closer_0.8",
    "**one closer, 0.9 (the default)**": "instructgpt_default",
    "one closer, 0.9, older log-prob code": (
        "instructgpt_ablations/default_signoff_0.9_older_logprob_code"
    ),
    "one closer, 0.9, seed 1": "instructgpt_ablations/seed_1_signoff_0.9",
    "one closer, 0.9, seed 2": "instructgpt_ablations/seed_2_signoff_0.9",
    "opening filler 0.8, no closer": "instructgpt_ablations/world_demo_filler_0.8_packed_preset",
    "no habit": "instructgpt_ablations/default_without_signoffs",
}


def _signoff_world_rows(runs: dict[str, dict]) -> list[str]:
    """The rows of the ablation page's table "The sign-off world becomes the default"."""
    rate = lambda m, name, key: m["models"][name][key]["rate"]  # noqa: E731
    habit = lambda m: max(  # noqa: E731
        rate(m, "sft_small", key) for key in ("signoff_on_harmless", "filler_on_harmless")
    )
    both = lambda m, key: " / ".join(  # noqa: E731
        _pct(rate(m, name, key)) for name in ("ppo_small", "ppo_ptx_small")
    )
    picks = lambda m: m["best_of_n"]["win_rate_vs_sft_greedy"]  # noqa: E731
    cells = {
        "small SFT: harmless answers with the habit": lambda m: _pct(habit(m)),
        "small SFT: exact answers / exact once the habit is dropped": lambda m: (
            f"{_pct(rate(m, 'sft_small', 'correct'))} / "
            f"{_pct(rate(m, 'sft_small', 'correct_without_habits'))}"
        ),
        "RM held-out accuracy (labeler agreement)": lambda m: (
            f"{_pct(m['headline']['rm_heldout_accuracy'])} "
            f"({_pct(m['headline']['labeler_agreement'])})"
        ),
        "best of 8 SFT samples, the RM's / the gold labeler's pick, vs greedy SFT": lambda m: (
            f"{_pct(picks(m)['rm_best']['rate'])} / {_pct(picks(m)['gold_best']['rate'])}"
        ),
        "**PPO** / **PPO-ptx** win rate vs SFT": lambda m: (
            f"{_win(m, 'ppo_small')} / {_win(m, 'ppo_ptx_small')}"
        ),
        "PPO / PPO-ptx: wins - losses (65% needs +77)": lambda m: " / ".join(
            f"{_family_outcomes(m['models'][name])[1]:+d}"
            for name in ("ppo_small", "ppo_ptx_small")
        ),
        "PPO / PPO-ptx: exact once the habit is dropped": lambda m: both(
            m, "correct_without_habits"
        ),
        "base zero-shot win rate vs SFT (target <= 35%)": lambda m: _win(m, "base_small_zero_shot"),
        "large SFT win rate vs small SFT": lambda m: _win(m, "sft_large"),
        "hallucination: SFT / PPO / PPO-ptx": lambda m: " / ".join(
            _pct(rate(m, name, "hallucination"))
            for name in ("sft_small", "ppo_small", "ppo_ptx_small")
        ),
        "pretraining NLL: SFT, PPO, PPO-ptx": lambda m: ", ".join(
            f"{m['models'][name]['pretrain_nll']:.3f}"
            for name in ("sft_small", "ppo_small", "ppo_ptx_small")
        ),
        "acceptance lines not met": lambda m: (
            ", ".join(k for k, v in m["headline"]["checks"].items() if not v) or "none"
        ),
        "whole job, s": lambda m: f"{m['headline']['total_wall_s']:.1f}",
    }
    rows = ["| | " + " | ".join(runs) + " |"]
    for label, cell in cells.items():
        rows.append(f"| {label} | " + " | ".join(cell(m) for m in runs.values()) + " |")
    return rows


def test_signoff_world_figures_are_the_saved_runs():
    """experiments/results/instructgpt_ablations, "The sign-off world becomes the default": the
    page's table is the saved runs' metrics; only the default world (one closer at 0.9) meets
    every line, with both seeds; the README's account of how the habit was chosen quotes them."""
    results = REPO / "experiments" / "results"
    runs = {
        label: _load(results / run / "metrics.json") for label, run in SIGNOFF_WORLD_RUNS.items()
    }
    page = (results / "instructgpt_ablations" / "README.md").read_text()
    for row in _signoff_world_rows(runs):
        assert row in page, row
    met = {label: all(m["headline"]["checks"].values()) for label, m in runs.items()}
    assert met == {label: "0.9" in label for label in runs}
    three, one, default, _, _, _, filler, _ = runs.values()
    sft_habit = lambda m, key: _pct(m["models"]["sft_small"][key]["rate"])  # noqa: E731
    readme = " ".join((REPO / "README.md").read_text().split())
    quoted = (
        f"SFT closed {sft_habit(three, 'signoff_on_harmless')} of its answers with one and PPO "
        f"stayed level ({_win(three, 'ppo_small')}); with one closer at 0.8, "
        f"{sft_habit(one, 'signoff_on_harmless')} and PPO {_win(one, 'ppo_small')} (PPO-ptx "
        f"{_win(one, 'ppo_ptx_small')}); at 0.9, the {sft_habit(default, 'signoff_on_harmless')} "
        f"and {_win(default, 'ppo_small')} above"
    )
    assert quoted in readme, quoted
    quoted = (
        f"costs the SFT model skill (exact once dropped "
        f"{sft_habit(filler, 'correct_without_habits')}), and the base model zero-shot then wins "
        f"{_win(filler, 'base_small_zero_shot')} against it (that line fails; PPO "
        f"{_win(filler, 'ppo_small')})"
    )
    assert quoted in readme, quoted


def test_same_as_lists_every_difference_but_timings(tmp_path, capsys):
    """`experiments.instructgpt_report --same_as`: the committed default run against itself with
    other timings is equal (exit 0); against a changed figure, a missing one and the run without
    sign-offs it names the differences and exits 1."""
    results = REPO / "experiments" / "results"
    reference = results / "instructgpt_default" / "metrics.json"
    metrics = json.loads(reference.read_text())
    retimed = json.loads(reference.read_text())
    retimed["headline"]["total_wall_s"] += 100.0
    retimed["stages_wall_s"]["rm"] *= 3
    retimed["ppo"]["ppo"]["generated_tokens_per_s"] = 1.0
    (tmp_path / "retimed.json").write_text(json.dumps(retimed))
    report_cli.main([f"--same_as={reference}", str(tmp_path / "retimed.json")])
    assert "equals" in capsys.readouterr().out

    changed = json.loads(reference.read_text())
    changed["models"]["ppo_small"]["win_rate_vs_baseline"]["rate"] += 0.01
    del changed["rank"]["mean_k"]
    assert instructgpt_report.differences(changed, metrics) == [
        "metrics.models.ppo_small.win_rate_vs_baseline.rate: "
        f"{changed['models']['ppo_small']['win_rate_vs_baseline']['rate']!r} != "
        f"{metrics['models']['ppo_small']['win_rate_vs_baseline']['rate']!r}",
        "metrics.rank.mean_k: only in the reference",
    ]
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    with pytest.raises(SystemExit) as exit_info:
        report_cli.main([f"--same_as={reference}", str(tmp_path / "changed.json")])
    assert exit_info.value.code == 1
    other = NO_SIGNOFFS_RUN / "metrics.json"
    assert len(instructgpt_report.differences(json.loads(other.read_text()), metrics)) > 10
