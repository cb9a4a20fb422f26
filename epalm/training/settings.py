"""A job's settings: the composed Hydra config, checked and turned into dataclasses.

The model's own settings become an ``EPALMConfig`` (what a checkpoint records); everything about
the run (data, optimisation, evaluation) lives here and is saved as ``config.yaml`` in the run
directory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from epalm.config import (
    PREFIX_POSITIONS,
    AdapterConfig,
    ConnectorConfig,
    EPALMConfig,
    InjectionConfig,
    LMConfig,
    PerceiverConfig,
    TaskConfig,
    TextConfig,
)
from epalm.tasks.vqa import VQA_EVAL_VERSIONS

MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
FEATURES = ("auto", "cache", "media")
TASKS = ("caption", "vqa", "retrieval")


class SettingsError(ValueError):
    """A value in the composed config that cannot work; names the key."""


@dataclass
class DataSettings:
    """Where samples come from: an embedded dataset (built on first use) or manifests."""

    name: str
    embedded: bool = False
    root: str | None = None  # manifests' directory (``epalm data prepare`` writes them)
    splits: dict[str, str] = field(
        default_factory=lambda: {"train": "train.jsonl", "val": "val.jsonl", "test": "test.jsonl"}
    )
    size: str = "default"  # embedded: "default" or "tiny"
    seed: int = 0  # embedded: the generator's seed
    video_backend: str = "pyav"
    on_bad_sample: str = "skip"  # "skip" (reported) or "error"
    vqa_eval: str | None = None  # the VQA code its published numbers used (task.vqa_eval=auto)


@dataclass
class TaskSettings:
    name: str
    metric: str  # the validation metric that picks the best checkpoint
    prompt: str = ""  # caption prompt, or the VQA template around {question}
    loss_on_prompt: bool = False
    # VQA accuracy by the official code of 2017 (published numbers) or its 2021 fix; "auto":
    # the dataset's own (data.vqa_eval: VQAv2's and GQA's is 2017), else 2021
    vqa_eval: str = "auto"
    # what trains and scores it (epalm.objectives): generative (caption, VQA) | contrastive
    objective: str = "generative"
    samples: str | None = None  # which manifest samples it reads: caption | vqa (None: its name)

    @property
    def sample_kind(self) -> str:
        return self.samples or self.name


@dataclass
class RetrievalSettings:
    """The dual encoder of ``task=retrieval`` (LilT): its text tower and shared space."""

    # the frozen text tower (epalm.retrieval.towers.TextTower's arguments): model (a hub id,
    # directory or offline name) or model_config + tokenizer; pooling auto | mean | cls | last
    text_encoder: dict[str, Any] = field(default_factory=lambda: {"model": "all-minilm-l6-v2"})
    embed_dim: int = 256
    temperature: float = 0.07  # initial; learned
    max_scale: float = 100.0  # the clamp on 1 / temperature
    recall_at: list[int] = field(default_factory=lambda: [1, 5, 10])
    # zero-shot classification on the evaluation split: the label each item's manifest entry
    # holds at this dotted key (e.g. attributes.shape), and the prompt around it
    zero_shot_label: str | None = None
    zero_shot_prompt: str = "a photo of a {label}"


@dataclass
class AlignSettings:
    """Which parameters of the dual encoder train (``align=NAME``: epalm.retrieval.align)."""

    name: str = "adapters"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerationSettings:
    num_beams: int = 3
    max_new_tokens: int = 30


@dataclass
class TrainSettings:
    batch_size: int = 32  # global: samples per optimizer step over all processes
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int | None = None  # wins over epochs when set
    lr: float = 2e-4  # projections
    prompt_lr: float = 1e-3  # soft prompt
    adapter_lr: float | None = None  # modules inside the LM, unfrozen norms / biases (None: lr)
    tower_lr: float | None = None  # a dual encoder's unlocked tower weights (None: adapter lr)
    weight_decay: float = 0.02
    warmup_ratio: float = 0.05
    min_lr: float = 1e-6
    max_grad_norm: float | None = 1.0
    optimizer: str = "epalm"  # the recipe: param groups and schedule (epalm.training.optim)
    frozen_dropout: bool = False  # frozen LM and encoder in training mode (no gradients)
    mixed_precision: str = "auto"
    features: str = "auto"  # auto: the feature cache unless augment; "cache"; "media"
    augment: bool = False  # training-time media augmentation (then features come from media)
    num_workers: int = 2
    log_every: int = 10
    save_every: int = 200
    keep_last: int = 2
    eval_every: int = 200
    val_samples: int | None = 500  # validation during training on a fixed subset


@dataclass
class EvalSettings:
    split: str = "test"
    blind: bool = True  # also evaluate with the perception removed
    blind_samples: int | None = None  # blind on a fixed random subset of this many (None: all)
    batch_size: int = 64
    max_samples: int | None = None
    generation: GenerationSettings = field(default_factory=GenerationSettings)


@dataclass
class RetrieveSettings:
    """``epalm retrieve``: search the evaluation split's gallery with a retrieval model."""

    text: list[str] = field(default_factory=list)  # queries: the gallery's best-fitting media
    media: list[str] = field(default_factory=list)  # files: the gallery's best-fitting captions
    k: int = 5
    index: str = "auto"  # auto (by gallery size) | exact | faiss-flat | faiss-hnsw


@dataclass
class PredictSettings:
    media: list[str] = field(default_factory=list)
    question: str | None = None  # None: caption


@dataclass
class DemoSettings:
    """``epalm demo``: which models to serve, where, and what uploads it takes."""

    checkpoints: list[str] = field(default_factory=list)  # saved models (checkpoint=DIR adds one)
    runs: str = "runs"  # with no checkpoint given: serve every <runs>/*/final
    host: str = "127.0.0.1"  # 0.0.0.0 serves other machines too
    port: int | None = None  # None: the first free port from 7860
    share: bool = False  # a public gradio.live link
    auth: str | None = None  # "user:password": a login page in front of the demo
    max_file_mb: float = 50.0
    max_seconds: float = 60.0  # the longest video or audio it takes
    concurrency: int = 1  # model runs at once; requests beyond it wait in the queue
    queue_size: int = 32  # requests waiting beyond which new ones are turned away
    examples: bool = True


@dataclass
class MultitaskSettings:
    """One model trained on several jobs at once (VL-Adapter's unified setting)."""

    # task id -> the overrides that make its single-task job, e.g. [modality=audio, task=vqa];
    # empty: this run's own job alone
    tasks: dict[str, list[str]] = field(default_factory=dict)
    # which task a step trains: p(task) ~ n ** (1 / temperature) for n training samples;
    # 1: proportional to the tasks' sizes, larger: flatter (towards uniform)
    temperature: float = 1.0
    # task id -> its relative share of the steps, naming every task (like the probabilities of
    # datasets.interleave_datasets); wins over temperature; null: the temperature rule
    weights: dict[str, float] | None = None


@dataclass
class RunSettings:
    modality: str
    task: TaskSettings
    lm: LMConfig
    encoder: PerceiverConfig
    connector: ConnectorConfig
    injection: InjectionConfig
    data: DataSettings
    train: TrainSettings
    eval: EvalSettings
    predict: PredictSettings
    run_dir: str
    demo: DemoSettings = field(default_factory=DemoSettings)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    multitask: MultitaskSettings = field(default_factory=MultitaskSettings)
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)
    retrieve: RetrieveSettings = field(default_factory=RetrieveSettings)
    align: AlignSettings = field(default_factory=AlignSettings)
    # a multi-task run's jobs by task id (from multitask.tasks, made by epalm.training.compose),
    # and each one's resolved config
    jobs: dict[str, RunSettings] = field(default_factory=dict, repr=False)
    job_configs: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    seed: int = 0
    faithful: bool = False  # eP-ALM's code as released, where it differs (epalm.training.faithful)
    resume: str = "auto"  # "auto": continue from the run directory's last checkpoint; "never"
    checkpoint: str | None = None  # eval / predict / demo: a saved model (default <run_dir>/final)
    model_cache: str | None = None
    log_level: str = "INFO"

    @property
    def task_id(self) -> str:
        """This run's task among a multi-task model's: ``<modality>-<task>``."""
        return f"{self.modality}-{self.task.name}"

    def task_runs(self) -> dict[str, RunSettings]:
        """The jobs this run trains by task id: a multi-task run's, else its own."""
        return dict(self.jobs) or {self.task_id: self}

    def model_config(self) -> EPALMConfig:
        """The model this run trains: a slot per modality, named after it; a multi-task model
        also records each task's slot, kind and prompt."""
        runs = self.task_runs()
        first = next(iter(runs.values()))
        return EPALMConfig(
            lm=self.lm,
            perceivers={run.modality: run.encoder for run in runs.values()},
            # the run's seed, unless the connector has one of its own
            connector=dataclasses.replace(
                self.connector,
                seed=self.seed if self.connector.seed is None else self.connector.seed,
                # a multi-task model's slots: each with its own jobs' levels
                slot_levels={r.modality: r.connector.levels for r in self.jobs.values()}
                or self.connector.slot_levels,
            ),
            injection=self.injection,
            adapter=dataclasses.replace(self.adapter, tasks=list(self.adapter.tasks) or list(runs)),
            text=TextConfig(
                caption_prompt=first.task.prompt if first.task.name == "caption" else "",
                vqa_prompt=first.task.prompt if first.task.name == "vqa" else TextConfig.vqa_prompt,
                loss_on_prompt=self.task.loss_on_prompt,
                task=first.task.name,
            ),
            tasks={
                name: TaskConfig(slot=run.modality, kind=run.task.name, prompt=run.task.prompt)
                for name, run in self.jobs.items()
            },
            model_cache=self.model_cache,
        )


def from_container(data: dict[str, Any], checked: bool = True) -> RunSettings:
    """Strictly typed settings from the composed config (a plain dict); errors name the key.
    ``checked=False`` leaves the values' checks (``check``) to the caller."""
    data = dict(data)
    encoder = data.pop("encoder")
    if encoder.get("modality") not in (None, data.get("modality")):
        raise SettingsError(
            f"encoder is a {encoder['modality']} encoder but modality={data.get('modality')}; "
            "pick an encoder of that modality (`epalm train --help` lists them)"
        )
    data["encoder"] = encoder["perceiver"]
    settings = _build(RunSettings, data, "")
    if settings.faithful:
        from epalm.training.faithful import as_released

        as_released(settings)
    if checked:
        check(settings)
    return settings


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise SettingsError(f"{where or 'config'}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SettingsError(f"{where or 'config'}: unknown keys {unknown}; known: {sorted(fields)}")
    values = {}
    for name, value in data.items():
        kind = fields[name].type
        nested = _DATACLASSES.get(kind if isinstance(kind, str) else getattr(kind, "__name__", ""))
        key = f"{where}.{name}" if where else name
        values[name] = _build(nested, value, key) if nested and value is not None else value
    missing = [n for n, f in fields.items() if n not in values and _required(f)]
    if missing:
        raise SettingsError(f"{where or 'config'}: missing keys {missing}")
    return cls(**values)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


_DATACLASSES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        TaskSettings,
        LMConfig,
        PerceiverConfig,
        ConnectorConfig,
        InjectionConfig,
        DataSettings,
        TrainSettings,
        EvalSettings,
        GenerationSettings,
        PredictSettings,
        DemoSettings,
        AdapterConfig,
        MultitaskSettings,
        RetrievalSettings,
        RetrieveSettings,
        AlignSettings,
    )
}


def check(s: RunSettings) -> None:
    """A SettingsError naming the first key whose value cannot work."""
    _one_of("train.mixed_precision", s.train.mixed_precision, MIXED_PRECISION)
    _one_of("train.features", s.train.features, FEATURES)
    _one_of("task.name", s.task.name, TASKS)
    s.task.vqa_eval = str(s.task.vqa_eval)  # task.vqa_eval=2021 on the command line is a number
    if s.task.vqa_eval == "auto":
        s.task.vqa_eval = str(s.data.vqa_eval or "2021")
    _one_of("task.vqa_eval", s.task.vqa_eval, VQA_EVAL_VERSIONS)
    _one_of("resume", s.resume, ("auto", "never"))
    _one_of("data.on_bad_sample", s.data.on_bad_sample, ("skip", "error"))
    _one_of("injection.prefix_positions", s.injection.prefix_positions, PREFIX_POSITIONS)
    _check_adapter(s.adapter)
    _check_multitask(s)
    levels = s.connector.levels_for(s.modality) if s.task.objective == "generative" else 1
    if s.encoder.num_levels and levels > s.encoder.num_levels:
        key = f"slot_levels.{s.modality}" if s.modality in s.connector.slot_levels else "levels"
        raise SettingsError(
            f"connector.{key}={levels} but the encoder has {s.encoder.num_levels} "
            f"levels; set connector.{key}={s.encoder.num_levels} or fewer"
        )
    if s.train.features == "cache" and s.train.augment:
        raise SettingsError("train.features=cache cannot augment media; set train.augment=false")
    for key in ("batch_size", "grad_accum", "log_every", "save_every", "eval_every", "keep_last"):
        if getattr(s.train, key) < 1:
            raise SettingsError(f"train.{key} must be at least 1, got {getattr(s.train, key)}")
    if s.train.batch_size % s.train.grad_accum:
        raise SettingsError(
            f"train.batch_size={s.train.batch_size} is not a multiple of "
            f"train.grad_accum={s.train.grad_accum}"
        )
    _check_demo(s.demo)
    if not s.data.embedded and not s.data.root:
        raise SettingsError(
            f"data.root is not set: point it at the manifests of {s.data.name!r} "
            f"(`epalm data prepare {s.data.name} --root DIR` writes them)"
        )


def _check_adapter(adapter: AdapterConfig) -> None:
    from epalm.adapters import adapter_names  # peft loads only when settings are checked

    _one_of("adapter.name", adapter.name, tuple(adapter_names()))
    if adapter.layers is not None and len(adapter.layers) != 2:
        raise SettingsError(
            f"adapter.layers={list(adapter.layers)}: give [first, last] or null (every layer)"
        )
    if len(set(adapter.tasks)) != len(adapter.tasks):
        raise SettingsError(f"adapter.tasks={list(adapter.tasks)} names a task twice")


def _positive_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _check_task_mix(multitask: MultitaskSettings) -> None:
    weights, tasks = multitask.weights, list(multitask.tasks)
    if not weights:
        return
    if sorted(weights) != sorted(tasks):
        raise SettingsError(
            f"multitask.weights names {sorted(weights)}; name every task of multitask.tasks, "
            f"and only those: {tasks}"
        )
    bad = {k: w for k, w in weights.items() if not _positive_number(w)}
    if bad:
        raise SettingsError(f"multitask.weights must be positive numbers, got {bad}")


def _check_multitask(s: RunSettings) -> None:
    if s.multitask.temperature <= 0:
        raise SettingsError(
            f"multitask.temperature must be positive, got {s.multitask.temperature}"
        )
    for name, overrides in s.multitask.tasks.items():
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise SettingsError(
                f"multitask.tasks.{name} must be a list of overrides, e.g. [modality=image, "
                f"task=vqa]; got {overrides!r}"
            )
    _check_task_mix(s.multitask)
    if s.multitask.tasks and s.adapter.tasks and list(s.adapter.tasks) != list(s.multitask.tasks):
        raise SettingsError(
            f"adapter.tasks={list(s.adapter.tasks)} differs from the tasks of multitask.tasks "
            f"{list(s.multitask.tasks)}; leave adapter.tasks empty"
        )


def _check_demo(demo: DemoSettings) -> None:
    if demo.port is not None and not 0 < demo.port < 65536:
        raise SettingsError(f"demo.port={demo.port} is not a port (1-65535)")
    for key in ("max_file_mb", "max_seconds", "concurrency", "queue_size"):
        if getattr(demo, key) <= 0:
            raise SettingsError(f"demo.{key} must be positive, got {getattr(demo, key)}")
    if demo.auth is not None and ":" not in demo.auth.strip(":"):
        raise SettingsError("demo.auth must be user:password")


def _one_of(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SettingsError(f"{key}={value!r} is not one of {', '.join(choices)}")
