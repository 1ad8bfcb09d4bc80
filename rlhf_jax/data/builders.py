"""TFDS builders for demonstrations and comparisons, written as array_record files.

At run time they are read with `tfds.data_source` (random access, no TensorFlow) and fed to grain
(`rlhf_jax.data.pipeline`). Importing this module registers:

- `anthropic_hh/<subset>`: HH-RLHF comparisons (K = 2), subsets helpful-base, harmless-base,
  helpful-online, helpful-rejection-sampled; splits train/test. Downloaded from the canonical
  GitHub location, or read from `manual_dir/<subset>/<split>.jsonl.gz` when present there (then
  only the splits found are built).
- `alpaca/alpaca`, `alpaca/self_instruct_seed`: demonstrations through Alpaca's prompt template;
  `alpaca/alpaca_1k_chat`: the shared 1,000-record sample with prompts as chat messages.
- `qa_feedback/comparisons`, `qa_feedback/gold`: FineGrainedRLHF qa-feedback, K = 4 with all six
  pairs labelled (ties skipped), or its human gold answers as demonstrations.
- `jsonl`: the user's own files, `Jsonl(config=JsonlConfig(name=..., kind=..., files={...}))`.

Every record is stored in one of two feature shapes (see `rlhf_jax.data.records`). Records a parser
rejects stop the build with an error naming file and record, unless the builder is made with
`skip_bad_records=True`; then they are counted in `info.metadata["skipped"]` and logged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from rlhf_jax.data import records as records_lib

DEMONSTRATIONS = "demonstrations"
COMPARISONS = "comparisons"


class QuietMadeConfigs:
    """Drops TFDS's "Using custom data configuration" warning for made-to-measure configs of the
    given types (`JsonlConfig` here, the world's `InstructionWorldConfig`): they are custom by
    design, and a job opens its datasets dozens of times. Other builders' configs still warn."""

    def __init__(self, *config_types: type):
        self.config_types = config_types

    def filter(self, record) -> bool:
        return not (
            record.msg == "Using custom data configuration: %s"
            and isinstance(record.args, tuple)
            and len(record.args) == 1
            and isinstance(record.args[0], self.config_types)
        )


def features_for(kind: str) -> tfds.features.FeaturesDict:
    """Feature spec of a demonstration or comparison record (text stored as UTF-8)."""
    if kind == DEMONSTRATIONS:
        return tfds.features.FeaturesDict(
            {
                "id": tfds.features.Text(),
                "prompt": tfds.features.Text(),
                "response": tfds.features.Text(),
            }
        )
    if kind == COMPARISONS:
        return tfds.features.FeaturesDict(
            {
                "id": tfds.features.Text(),
                "prompt": tfds.features.Text(),
                "responses": tfds.features.Sequence(tfds.features.Text()),
                # (winner, loser) index pairs: every strict preference of the prompt.
                "pairs": tfds.features.Tensor(shape=(None, 2), dtype=np.int32),
            }
        )
    raise ValueError(
        f"Unknown record kind {kind!r}; expected {DEMONSTRATIONS!r} or {COMPARISONS!r}."
    )


def _encode(record: dict, kind: str) -> dict:
    if kind == COMPARISONS:
        return {**record, "pairs": np.asarray(record["pairs"], np.int32).reshape(-1, 2)}
    return record


class _RecordsBuilder(tfds.core.GeneratorBasedBuilder):
    """Shared machinery: parse files with a `records` parser, count or raise on bad records."""

    def __init__(self, *, skip_bad_records: bool = False, **kwargs):
        self.skip_bad_records = skip_bad_records
        kwargs.setdefault("file_format", "array_record")  # random access without TensorFlow
        super().__init__(**kwargs)

    kind: str  # set per builder or config

    def _record_kind(self) -> str:
        return getattr(self.builder_config, "kind", None) or self.kind

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(self.__doc__ or "").strip().splitlines()[0],
            features=features_for(self._record_kind()),
            metadata=tfds.core.MetadataDict(),
        )

    def _generate_examples(self, paths, parser_name: str):
        stats = records_lib.ReadStats()
        for path in paths:
            for record in records_lib.read_records(
                path,
                records_lib.PARSERS[parser_name],
                skip_bad=self.skip_bad_records,
                stats=stats,
            ):
                yield record["id"], _encode(record, self._record_kind())
        skipped = self.info.metadata.setdefault("skipped", {})
        for reason, count in stats.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + count
        if stats.skipped:
            logging.warning(
                "%s: skipped %d of %d records: %s",
                ",".join(os.path.basename(str(p)) for p in paths),
                sum(stats.skipped.values()),
                stats.read,
                stats.skipped,
            )


@dataclasses.dataclass
class HHConfig(tfds.core.BuilderConfig):
    subset: str = "harmless-base"


HH_URL = "https://raw.githubusercontent.com/anthropics/hh-rlhf/master/{subset}/{split}.jsonl.gz"
HH_SUBSETS = ("helpful-base", "harmless-base", "helpful-online", "helpful-rejection-sampled")


class AnthropicHh(_RecordsBuilder):
    """Anthropic HH-RLHF human preference comparisons (K = 2, prompt = shared dialogue)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [HHConfig(name=s, subset=s) for s in HH_SUBSETS]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Optional: put <subset>/<split>.jsonl.gz from github.com/anthropics/hh-rlhf in manual_dir "
        "to build offline; otherwise the files are downloaded."
    )
    kind = COMPARISONS

    def _split_generators(self, dl_manager):
        subset = self.builder_config.subset
        manual = _manual_dir(dl_manager)
        local = {}
        if manual is not None:
            for split in ("train", "test"):
                path = os.path.join(manual, subset, f"{split}.jsonl.gz")
                if os.path.exists(path):
                    local[split] = path
        if local:
            paths = local
        else:
            paths = dl_manager.download(
                {s: HH_URL.format(subset=subset, split=s) for s in ("train", "test")}
            )
        return {split: self._generate_examples([path], "hh") for split, path in paths.items()}


@dataclasses.dataclass
class FileConfig(tfds.core.BuilderConfig):
    """A builder config reading one file from manual_dir or a URL."""

    file_name: str = ""
    url: str = ""
    parser: str = ""
    kind: str = ""


ALPACA_URL = "https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/"


class Alpaca(_RecordsBuilder):
    """Instruction demonstrations (instruction, input, output) in Alpaca's prompt template."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [
        FileConfig(
            name="alpaca",
            file_name="alpaca_data.json",
            url=ALPACA_URL + "alpaca_data.json",
            parser="alpaca",
            kind=DEMONSTRATIONS,
        ),
        FileConfig(
            # The 1,000-record sample in ../shared/data/alpaca-data-1k, prompts as chat messages
            # (instruction, then its input) for models with a chat template.
            name="alpaca_1k_chat",
            file_name="alpaca_data_1k.json",
            url="",
            parser="alpaca_chat",
            kind=DEMONSTRATIONS,
        ),
        FileConfig(
            name="self_instruct_seed",
            file_name="seed_tasks.jsonl",
            url=ALPACA_URL + "seed_tasks.jsonl",
            parser="alpaca",
            kind=DEMONSTRATIONS,
        ),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Optional: put alpaca_data.json / seed_tasks.jsonl in manual_dir; alpaca_1k_chat needs "
        "alpaca_data_1k.json there (../shared/data/alpaca-data-1k)."
    )

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples(
                [_file(self.builder_config, dl_manager)], self.builder_config.parser
            )
        }


QA_FEEDBACK_URL = (
    "https://raw.githubusercontent.com/allenai/FineGrainedRLHF/main/tasks/qa_feedback/data/"
)


class QaFeedback(_RecordsBuilder):
    """FineGrainedRLHF qa-feedback: K = 4 answers per question, all 6 pairs human-labelled."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [
        FileConfig(name="comparisons", parser="qa_feedback", kind=COMPARISONS),
        FileConfig(name="gold", parser="qa_feedback_gold", kind=DEMONSTRATIONS),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Optional: put dev_feedback.json (and train_feedback.json) in manual_dir."
    )

    def _split_generators(self, dl_manager):
        config = self.builder_config
        splits = {}
        for split, file_name in (("train", "train_feedback.json"), ("dev", "dev_feedback.json")):
            path = _file(
                dataclasses.replace(config, file_name=file_name, url=QA_FEEDBACK_URL + file_name),
                dl_manager,
                required=split == "dev",
            )
            if path is not None:
                splits[split] = self._generate_examples([path], config.parser)
        return splits


@dataclasses.dataclass
class JsonlConfig(tfds.core.BuilderConfig):
    """The user's files: kind "demonstrations" ({prompt, response}) or "comparisons" ({prompt,
    responses, ranking} or {prompt, chosen, rejected}); files maps split -> list of paths."""

    kind: str = COMPARISONS
    files: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def make(cls, name: str, kind: str, files: dict[str, str | list[str]], **kwargs) -> JsonlConfig:
        normalized = tuple(
            (
                split,
                (os.fspath(paths),)
                if isinstance(paths, str | os.PathLike)
                else tuple(map(os.fspath, paths)),
            )
            for split, paths in files.items()
        )
        # The prepared data is keyed by the files' paths, sizes and times, so an edited file is
        # rebuilt instead of read stale.
        fingerprint = hashlib.sha256(kind.encode())
        for split, paths in normalized:
            for path in paths:
                stat = os.stat(path) if os.path.exists(path) else None
                version = stat and (stat.st_size, stat.st_mtime_ns)
                fingerprint.update(f"{split}|{os.path.abspath(path)}|{version}".encode())
        return cls(
            name=f"{name}-{fingerprint.hexdigest()[:10]}",
            kind=kind,
            files=normalized,
            version="1.0.0",
            **kwargs,
        )


class Jsonl(_RecordsBuilder):
    """The user's own JSON-lines demonstrations or comparisons."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, config: JsonlConfig, **kwargs):
        if not isinstance(config, JsonlConfig) or not config.files:
            raise ValueError(
                "Jsonl needs config=JsonlConfig.make(name, kind, files={split: paths})."
            )
        features_for(config.kind)  # validates the kind
        super().__init__(config=config, **kwargs)

    def _split_generators(self, dl_manager):
        parser = "demonstration" if self.builder_config.kind == DEMONSTRATIONS else "ranking"
        return {
            split: self._generate_examples(list(paths), parser)
            for split, paths in self.builder_config.files
        }


def _manual_dir(dl_manager) -> str | None:
    try:
        manual = dl_manager.manual_dir
    except (AssertionError, ValueError, tfds.core.utils.NonMatchingChecksumError):
        return None
    return os.fspath(manual) if manual is not None and os.path.isdir(os.fspath(manual)) else None


def _file(config: FileConfig, dl_manager, *, required: bool = True) -> str | None:
    """`manual_dir/<file_name>` when present, else the download of `config.url`."""
    manual = _manual_dir(dl_manager)
    if manual is not None:
        path = os.path.join(manual, config.file_name)
        if os.path.exists(path):
            return path
        if not required:
            return None
    if not config.url:
        raise FileNotFoundError(
            f"{config.file_name} is read from a local copy only: put it in manual_dir "
            f"(now {manual})."
        )
    return os.fspath(dl_manager.download(config.url))


def build(builder: tfds.core.DatasetBuilder, *, manual_dir: str | None = None) -> None:
    """`download_and_prepare` with an optional manual dir (local copies instead of downloads)."""
    config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder.download_and_prepare(download_config=config)


logging.get_absl_logger().addFilter(QuietMadeConfigs(JsonlConfig))
