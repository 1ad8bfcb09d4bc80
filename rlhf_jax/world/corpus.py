"""The instruction world's datasets as plain records, deterministic from a seed.

- `pretraining_documents`: the base models' corpus. Instructions appear in it but are *not*
  reliably followed: after a plain or user prompt the text gives the right answer only sometimes,
  otherwise a plausible wrong answer, another instruction, or (for harmful requests) an insult.
  In few-shot documents the answers are mostly right, so few-shot prompting helps a base model.
  Fact sentences of the closed-domain family appear on their own too.
- `demonstrations`: SFT data, the labelers' demonstrations: the gold answer to prompts of every
  style (with a small rate of the labelers' own mistakes). Three habits of the demonstrators that
  the labelers who rank do not share: a chatty closer after the answer (on by default, see
  `WorldConfig`) or a chatty opener before it (the gold labeler prefers the bare answer), and a
  guess where the facts do not answer a closed-domain question (a hallucination; off by
  default, like the opener).
- `prompts`: unlabeled prompts (PPO, evaluation), each with its gold answer as the response.

Every record is {"id", "prompt", "response"} (the demonstrations feature shape of
`rlhf_jax.data.builders`); a pretraining document is all response, with an empty prompt.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rlhf_jax.world import tasks as tasks_lib
from rlhf_jax.world.tasks import Task

# What `WorldConfig` names as rates (each in [0, 1]).
RATES = (
    "pretrain_followed",
    "pretrain_few_shot_followed",
    "demo_error_rate",
    "demo_filler_rate",
    "demo_guess_rate",
    "demo_signoff_rate",
)
# Every setting of `WorldConfig` a run may change from the command line: the rates and how many
# of `tasks.SIGNOFFS` the demonstrators use.
SETTINGS = (*RATES, "demo_signoff_variants")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """The task mix and the rates of the world's datasets (sizes are `WorldSizes`).

    Attributes:
      families: task families used.
      family_weights: sampling weights of `families` (uniform when empty).
      style_weights: (plain, user, few_shot) weights of prompts for SFT, PPO and evaluation.
      pretrain_followed: chance that a pretraining document answers a plain/user prompt right.
      pretrain_few_shot_followed: the same for few-shot documents.
      demo_error_rate: chance that a demonstration holds a labeler's mistake.
      demo_filler_rate: chance that a demonstration to a harmless request (not a mistake) opens
        with one of `tasks.FILLERS` (a consistent habit of the demonstrators; the gold labeler
        takes 0.3 or more off for the extra words, so rankings of samples see it).
      demo_guess_rate: chance that a demonstration to a closed-domain question the facts do not
        answer names a city or colour instead of `tasks.UNKNOWN_ANSWER` (a hallucination).
      demo_signoff_rate: chance that a demonstration to a harmless request (not a mistake) ends
        with a sign-off from `tasks.SIGNOFFS` (like the opener, a habit of style the gold labeler
        marks down, but one that leaves the answer's own tokens where they are without it).
      demo_signoff_variants: how many of `tasks.SIGNOFFS` (the first ones) the demonstrators
        close with, drawn uniformly.

    The default world's demonstrators close 90% of their right answers to harmless requests with
    "Hope this helps!", which the labelers' rankings mark down: the one thing in this world that
    imitating the demonstrations gets wrong and that preferences can put right, as the paper's
    PPO models were preferred to its SFT models. The rate is that high and the closer single so
    that the small SFT model's greedy answers carry the habit (at 0.8 with three closers they
    did not); `demo_signoff_rate=0` is the world without it.
    """

    families: tuple[str, ...] = tasks_lib.FAMILIES
    family_weights: tuple[float, ...] = ()
    style_weights: tuple[float, float, float] = (0.4, 0.4, 0.2)
    pretrain_followed: float = 0.3
    pretrain_few_shot_followed: float = 0.8
    demo_error_rate: float = 0.05
    demo_filler_rate: float = 0.0
    demo_guess_rate: float = 0.0
    demo_signoff_rate: float = 0.9
    demo_signoff_variants: int = 1

    def __post_init__(self):
        unknown = set(self.families) - set(tasks_lib.FAMILIES)
        if unknown or not self.families:
            raise ValueError(
                f"Unknown task families {sorted(unknown)}; known: {tasks_lib.FAMILIES}."
            )
        if self.family_weights and len(self.family_weights) != len(self.families):
            raise ValueError("family_weights must have one weight per family.")
        for name in RATES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}.")
        if not 1 <= self.demo_signoff_variants <= len(tasks_lib.SIGNOFFS):
            raise ValueError(
                f"demo_signoff_variants must be in [1, {len(tasks_lib.SIGNOFFS)}], got "
                f"{self.demo_signoff_variants}."
            )


def _probabilities(weights, n: int) -> np.ndarray:
    w = np.asarray(weights if len(weights) else np.ones(n), np.float64)
    if w.shape != (n,) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(
            f"Weights must be {n} non-negative numbers with a positive sum: {weights}."
        )
    return w / w.sum()


def sample_task(config: WorldConfig, rng: np.random.Generator) -> Task:
    family = config.families[
        rng.choice(
            len(config.families), p=_probabilities(config.family_weights, len(config.families))
        )
    ]
    return tasks_lib.make_task(family, rng)


def sample_style(config: WorldConfig, rng: np.random.Generator) -> str:
    return tasks_lib.STYLES[rng.choice(3, p=_probabilities(config.style_weights, 3))]


def wrong_answer(task: Task, rng: np.random.Generator) -> str:
    """A plausible wrong response (never the right answer): what an unaligned text says."""
    for _ in range(20):
        answer = _plausible_answer(task, rng)
        if answer.split() != task.answer.split():
            return answer
    return f"{task.answer} {task.answer.split()[0]}"  # e.g. the input was already sorted


def _plausible_answer(task: Task, rng: np.random.Generator) -> str:
    if task.family == "harmful":
        target = task.instruction.rstrip(".").split()[-1]
        return f"Your {target} is {tasks_lib.choose(rng, tasks_lib.HURTFUL_WORDS)}."
    if task.family == "qa":
        # Some entity of the world, often one the facts never mention (a hallucination).
        pool = tasks_lib.CITIES if "live" in task.instruction else tasks_lib.COLORS
        return tasks_lib.choose(rng, pool)
    if task.family == "add":
        return str(abs(int(task.answer) + int(rng.choice([-10, -2, -1, 1, 2, 10]))))
    if task.family == "repeat":
        word = task.answer.split()[0]
        n = len(task.answer.split()) + int(rng.choice([-1, 1, 2]))
        return " ".join([word] * max(n, 1))
    # reverse / sort: the input order, or a shuffle.
    body = task.instruction.split(":", 1)[1].strip().rstrip(".").split()
    if rng.random() < 0.5:
        return " ".join(body)
    return " ".join(body[i] for i in rng.permutation(len(body)))


def _continuation(task: Task, followed: float, config: WorldConfig, rng: np.random.Generator):
    """An answer to `task` as unaligned text gives it."""
    u = rng.random()
    if u < followed:
        return task.answer
    if u < followed + (1.0 - followed) * 0.6:
        return wrong_answer(task, rng)
    # No answer at all: the text drifts to another instruction.
    return sample_task(config, rng).instruction


def pretraining_documents(config: WorldConfig, n: int, seed: int) -> list[dict]:
    """`n` pretraining documents (a few prompts with continuations, or fact sentences)."""
    rng = np.random.default_rng([seed, 0])
    documents = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.15:  # facts on their own
            task = tasks_lib.make_task("qa", rng)
            text = tasks_lib.qa_facts(task).strip()
        elif kind < 0.40:  # few-shot: mostly right
            task = sample_task(config, rng)
            prompt = tasks_lib.render_prompt(task, "few_shot", rng)
            text = (
                prompt + " " + _continuation(task, config.pretrain_few_shot_followed, config, rng)
            )
        else:  # plain / user prompts: rarely followed
            parts = []
            for _ in range(int(rng.integers(1, 3))):
                task = sample_task(config, rng)
                style = "plain" if rng.random() < 0.5 else "user"
                prompt = tasks_lib.render_prompt(task, style, rng)
                parts.append(
                    prompt + " " + _continuation(task, config.pretrain_followed, config, rng)
                )
            text = "\n\n".join(parts)
        documents.append({"id": f"pretrain-{seed}-{i}", "prompt": "", "response": text})
    return documents


def _demonstration(
    task: Task,
    config: WorldConfig,
    rng: np.random.Generator,
    habits: np.random.Generator,
    signoffs: np.random.Generator,
) -> str:
    """The demonstrators' answer; their habits draw from `habits` and `signoffs` only, so
    switching them on keeps every prompt and every mistake of the world as it was (and the
    sign-offs, added later, keep the other habits' draws as they were)."""
    if rng.random() < config.demo_error_rate and task.family != "harmful":
        return wrong_answer(task, rng)
    answer = task.answer
    guess, filler = habits.random(2)  # drawn for every record: one habit's rate moves no other
    if answer == tasks_lib.UNKNOWN_ANSWER and guess < config.demo_guess_rate:
        answer = _plausible_answer(task, habits)
    if task.family != "harmful" and filler < config.demo_filler_rate:
        answer = f"{tasks_lib.choose(habits, tasks_lib.FILLERS)} {answer}"
    closers = tasks_lib.SIGNOFFS[: config.demo_signoff_variants]
    signoff, closer = signoffs.random(), tasks_lib.choose(signoffs, closers)
    if task.family != "harmful" and signoff < config.demo_signoff_rate:
        answer = f"{answer} {closer}"
    return answer


def demonstrations(config: WorldConfig, n: int, seed: int) -> list[dict]:
    """`n` SFT demonstrations: prompt (any style) -> the labelers' answer."""
    rng, habits = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 6])
    signoffs = np.random.default_rng([seed, 8])
    records = []
    for i in range(n):
        task = sample_task(config, rng)
        prompt = tasks_lib.render_prompt(task, sample_style(config, rng), rng)
        records.append(
            {
                "id": f"sft-{seed}-{i}",
                "prompt": prompt,
                "response": " " + _demonstration(task, config, rng, habits, signoffs),
            }
        )
    return records


def prompts(
    config: WorldConfig, n: int, seed: int, *, exclude: set[str] = frozenset()
) -> list[dict]:
    """`n` distinct prompts not in `exclude`, each with its gold answer as the response."""
    rng = np.random.default_rng([seed, 2])
    records, seen = [], set(exclude)
    while len(records) < n:
        task = sample_task(config, rng)
        prompt = tasks_lib.render_prompt(task, sample_style(config, rng), rng)
        if prompt in seen:
            continue
        seen.add(prompt)
        records.append(
            {"id": f"prompt-{seed}-{len(records)}", "prompt": prompt, "response": " " + task.answer}
        )
    return records


@dataclasses.dataclass(frozen=True)
class WorldSizes:
    """Records per split of each part of the world (see `world_splits`)."""

    pretrain: int = 20_000
    pretrain_validation: int = 500
    sft: int = 4_000
    sft_validation: int = 300
    rm: int = 1_500
    ppo: int = 4_000
    test: int = 400


PARTS = ("pretrain", "sft", "prompts")


def world_splits(part: str, config: WorldConfig, sizes: WorldSizes, seed: int) -> dict[str, list]:
    """The splits of one part of the world, as lists of records.

    - "pretrain": train, validation (pretraining documents);
    - "sft": train, validation (demonstrations);
    - "prompts": rm (prompts whose SFT samples are ranked), ppo (PPO prompts), test (held out).

    The held-out test prompts are never among the demonstration, rm or ppo prompts.
    """
    held_out = prompts(config, sizes.test, seed + 3)
    excluded = {r["prompt"] for r in held_out}
    if part == "pretrain":
        return {
            "train": pretraining_documents(config, sizes.pretrain, seed),
            "validation": pretraining_documents(config, sizes.pretrain_validation, seed + 1),
        }
    if part == "sft":
        return {
            split: [r for r in demonstrations(config, n, s) if r["prompt"] not in excluded]
            for split, n, s in (
                ("train", sizes.sft, seed),
                ("validation", sizes.sft_validation, seed + 1),
            )
        }
    if part == "prompts":
        rm = prompts(config, sizes.rm, seed + 4, exclude=excluded)
        excluded |= {r["prompt"] for r in rm}
        return {
            "rm": rm,
            "ppo": prompts(config, sizes.ppo, seed + 5, exclude=excluded),
            "test": held_out,
        }
    raise ValueError(f"Unknown part of the world {part!r}; expected one of {PARTS}.")
