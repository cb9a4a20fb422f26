"""The model's configuration: plain dataclasses that round-trip through config.json.

A checkpoint's config names every frozen part (hub id, local path, or an HF config for random
weights) and every trained part's settings, so ``EPALM.from_pretrained`` can rebuild the model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class LMConfig:
    """The frozen decoder LM: ``model`` (hub id or directory) or ``model_config`` (random)."""

    model: str | None = None
    model_config: dict[str, Any] | None = None
    seed: int = 0
    tokenizer: str | None = None  # defaults to `model`
    dtype: str = "float32"
    # What a preset promises; checked against the loaded LM when set.
    hidden_size: int | None = None
    num_layers: int | None = None


@dataclass
class PerceiverConfig:
    """A registered perceiver and the keyword arguments that build it."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    # What a preset promises; checked against the built perceiver when set.
    hidden_size: int | None = None
    num_levels: int | None = None


@dataclass
class ConnectorConfig:
    """The trained part before the LM: a connector (``epalm.connectors``) and a soft prompt."""

    # ep-alm (per-level projections of summaries) | all-tokens | token-learner | resampler |
    # joint-fusion, or a registered one
    name: str = "ep-alm"
    kwargs: dict[str, Any] = field(default_factory=dict)  # the connector's own settings (K, ...)
    levels: int = 6  # how many of the encoder's last layers are read (and injected)
    # per slot, where it differs from `levels` (encoders of different depths in one model,
    # e.g. {audio: 4} for Whisper tiny's 4 layers beside a 12-layer image encoder)
    slot_levels: dict[str, int] = field(default_factory=dict)
    shared: bool = False  # one Linear for all levels instead of one each
    prompt_tokens: int = 10
    prompt_mlp: bool = True  # Embedding -> Linear -> Tanh -> Linear reparametrisation
    prompt_mlp_hidden: int | None = None  # defaults to the LM's width
    init_std: float = 0.02
    # The trained parts' initialisation draws from a generator of its own with this seed, so
    # nothing that ran before (model conversion, dataset builds) can change it; None: from
    # torch's global generator, as any nn.Module.
    seed: int | None = None

    def levels_for(self, slot: str) -> int:
        """How many of the last levels of ``slot``'s encoder are projected and injected."""
        return self.slot_levels.get(slot, self.levels)


PREFIX_POSITIONS = ("counted", "none")


@dataclass
class InjectionConfig:
    """Which LM layers receive perceptual tokens (0-based, inclusive; None: eP-ALM's default),
    and the positions of the prefix."""

    first_layer: int | None = None
    last_layer: int | None = None
    # "counted": slots and prompt take positions 0.., text follows them; "none": text starts
    # at 0 and the prefix gets no position, as eP-ALM's code (see epalm.injection)
    prefix_positions: str = "counted"


@dataclass
class AdapterConfig:
    """Trainable modules inside the frozen LM (VL-Adapter; ``epalm.adapters``) and which of the
    LM's own parameters train beside them. ``name="none"``: the LM stays untouched."""

    name: str = "none"  # none | bottleneck | compacter | hyperformer | lora, or a registered one
    kwargs: dict[str, Any] = field(default_factory=dict)  # the method's own settings
    layers: list[int] | None = None  # [first, last] decoder layers (inclusive); None: all
    norms: bool = False  # train the LM's norms (VL-Adapter's unfrozen LayerNorms)
    biases: bool = False  # train the LM's biases (BitFit)
    shared: bool = True  # one adapter set for every task; False: one set per task
    tasks: list[str] = field(default_factory=list)  # the tasks, the first the default

    def task_names(self) -> list[str]:
        return list(self.tasks) or ["default"]


@dataclass
class TextConfig:
    """How prompts and targets become tokens."""

    caption_prompt: str = ""
    vqa_prompt: str = "Question: {question} Answer:"
    loss_on_prompt: bool = False  # eP-ALM's "question tokens too" when True
    task: str | None = None  # what the connector was trained for: "caption" or "vqa"


@dataclass
class TaskConfig:
    """One task of a multi-task model: which slot its media fill, what it does, its prompt."""

    slot: str  # the perceiver its media go to
    kind: str  # "caption" or "vqa"
    prompt: str = ""  # the caption prompt, or the VQA template around {question}


@dataclass
class EPALMConfig:
    lm: LMConfig = field(default_factory=LMConfig)
    perceivers: dict[str, PerceiverConfig] = field(default_factory=dict)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    injection: InjectionConfig = field(default_factory=InjectionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    # A multi-task model's tasks by id ("image-vqa", ...); empty: one task, prompts from `text`
    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    # Where offline models are built (default: $EPALM_CACHE or ~/.cache/epalm). A property of
    # this machine, so checkpoints never record it.
    model_cache: str | None = None
    # Digests of the frozen parts' weights ("lm", "perceivers.<slot>"), written by
    # save_pretrained and checked by from_pretrained.
    frozen_digests: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> EPALMConfig:
        data = dict(data)
        perceivers = {
            slot: _build(PerceiverConfig, spec, f"{source}: perceivers.{slot}")
            for slot, spec in data.pop("perceivers", {}).items()
        }
        tasks = {
            name: _build(TaskConfig, spec, f"{source}: tasks.{name}")
            for name, spec in data.pop("tasks", {}).items()
        }
        parts = {
            f.name: _build(f.type_class, data.pop(f.name), f"{source}: {f.name}")
            for f in _SECTIONS
            if f.name in data
        }
        model_cache = data.pop("model_cache", None)
        digests = dict(data.pop("frozen_digests", {}))
        if data:
            raise ValueError(f"{source}: unknown keys {sorted(data)}")
        return cls(
            perceivers=perceivers,
            tasks=tasks,
            model_cache=model_cache,
            frozen_digests=digests,
            **parts,
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> EPALMConfig:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(data, source=str(path))


@dataclass
class _Section:
    name: str
    type_class: type


_SECTIONS = [
    _Section("lm", LMConfig),
    _Section("connector", ConnectorConfig),
    _Section("injection", InjectionConfig),
    _Section("text", TextConfig),
    _Section("adapter", AdapterConfig),
]


def _build(cls: type[T], data: Any, where: str) -> T:
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys are {sorted(known)}")
    return cls(**data)
