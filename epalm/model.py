"""EPALM: frozen perceivers + a trainable connector + a frozen decoder LM."""

from __future__ import annotations

import inspect
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast

from epalm.adapters import LMAdapter, attach_adapter
from epalm.adapters.base import ThreadTask
from epalm.atomic import atomic_write, atomic_write_text
from epalm.config import EPALMConfig
from epalm.connectors import Connector, SoftPrompt, build_connector, connector_class
from epalm.connectors.base import TextContext
from epalm.encoders.base import Perceiver, token_features
from epalm.encoders.registry import build_perceiver
from epalm.errors import MissingFileError
from epalm.fingerprint import state_sha256, weights_sha256
from epalm.injection import Injector, SlotTokens, decoder_layers, injection_schedule
from epalm.text import IGNORE_INDEX, encode_prompts, encode_training, prepare_tokenizer
from epalm.zoo import load_model
from epalm.zoo.cache import using_cache
from epalm.zoo.loading import BYTE_TOKENIZER as BYTE_TOKENIZER  # tiny models name it
from epalm.zoo.loading import load_tokenizer

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# lm.tokenizer naming epalm's byte-level tokenizer, for tiny random LMs (tests, smoke runs)
# eP-ALM's evaluation decoding: open-ended beam search, at most 30 new tokens.
DEFAULT_GENERATION = {"num_beams": 3, "max_new_tokens": 30}

Media = Any  # one raw sample (path, array, PIL image, ...) or a list of them


@dataclass
class ParameterReport:
    """Trainable vs total parameters, overall and per part."""

    parts: dict[str, tuple[int, int]]  # part -> (trainable, total)

    @property
    def trainable(self) -> int:
        return sum(t for t, _ in self.parts.values())

    @property
    def total(self) -> int:
        return sum(n for _, n in self.parts.values())

    @property
    def share(self) -> float:
        return self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        lines = [
            f"trainable {self.trainable:,} of {self.total:,} parameters ({100 * self.share:.3f}%)"
        ]
        lines += [
            f"  {name:<24} {t:>14,} trainable of {n:>14,}" for name, (t, n) in self.parts.items()
        ]
        return "\n".join(lines)


class EPALM(nn.Module):
    """A frozen decoder LM that perceives through frozen encoders and a tiny trained connector."""

    def __init__(
        self,
        config: EPALMConfig,
        *,
        lm: nn.Module | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ):
        super().__init__()
        self.config = config
        with using_cache(config.model_cache):
            self.lm = lm if lm is not None else _load_lm(config)
            self.tokenizer = prepare_tokenizer(
                tokenizer if tokenizer is not None else _load_tokenizer(config)
            )
            self.perceivers = nn.ModuleDict(
                {
                    slot: build_perceiver(spec.name, **spec.kwargs)
                    for slot, spec in config.perceivers.items()
                }
            )
        self.lm.requires_grad_(False).eval()
        self._local = ThreadTask()  # the task of this thread's using_task block
        self.frozen_dropout = False
        self._check_promises()
        self._lm_takes = _lm_arguments(self.lm)
        unknown = sorted(set(config.connector.slot_levels) - set(self.perceivers))
        if unknown:
            raise ValueError(
                f"connector.slot_levels names {unknown}, which are not slots of this model "
                f"({', '.join(self.perceivers) or 'none'})"
            )
        for slot, perceiver in self.perceivers.items():
            _check_levels(slot, perceiver, config.connector.levels_for(slot))
        with _own_generator(config.connector.seed):
            self.connectors = self._build_connectors()
            self.prompt = self._build_prompt()
        self.injector = self._build_injector()
        with _own_generator(config.connector.seed):  # a stream of its own: connectors unchanged
            self.adapter: LMAdapter | None
            self.adapter, unfrozen = attach_adapter(
                self.lm, config.adapter, self.injector, config.adapter.task_names()
            )
        # the LM's own tensors that train (norms, biases): not frozen weights, so not digested
        self._trained_in_lm = frozenset(unfrozen)

    def _check_promises(self) -> None:
        """A preset's stated sizes must match what was loaded (catches a wrong model id early)."""
        lm = self.config.lm
        actual = {
            "hidden_size": self.lm.config.get_text_config().hidden_size,
            "num_layers": len(decoder_layers(self.lm)),
        }
        _check_promised(
            f"lm {lm.model}", {"hidden_size": lm.hidden_size, "num_layers": lm.num_layers}, actual
        )
        for slot, spec in self.config.perceivers.items():
            p = self.perceivers[slot]
            promised = {"hidden_size": spec.hidden_size, "num_levels": spec.num_levels}
            _check_promised(
                f"perceiver {slot!r}",
                promised,
                {"hidden_size": p.hidden_size, "num_levels": p.num_levels},
            )

    def _build_connectors(self) -> nn.ModuleDict:
        c = self.config.connector
        cls = connector_class(c.name)
        if cls.uses_text and self.config.text.loss_on_prompt:
            raise ValueError(
                f"connector {c.name!r} fuses the prompt's text into the slot, so with "
                "text.loss_on_prompt=true a prompt token would be trained on what follows it"
            )
        lm_dim = self.lm.config.get_text_config().hidden_size
        extra = {"text_dim": self.lm.get_input_embeddings().embedding_dim} if cls.uses_text else {}
        return nn.ModuleDict(
            {
                slot: build_connector(
                    c.name,
                    encoder_dim=p.token_size if cls.reads == "tokens" else p.hidden_size,
                    lm_dim=lm_dim,
                    levels=c.levels_for(slot),
                    shared=c.shared,
                    **extra,
                    **{**_frames_for(cls, p), **c.kwargs},
                )
                for slot, p in self.perceivers.items()
            }
        )

    def _build_prompt(self) -> SoftPrompt | None:
        c, embed_dim = self.config.connector, self.lm.get_input_embeddings().embedding_dim
        if not c.prompt_tokens:
            return None
        mlp_hidden = (c.prompt_mlp_hidden or embed_dim) if c.prompt_mlp else None
        return SoftPrompt(c.prompt_tokens, embed_dim, mlp_hidden, c.init_std)

    def _build_injector(self) -> Injector:
        c, injection = self.config.connector, self.config.injection
        num_layers = len(decoder_layers(self.lm))
        per_slot = [  # each slot spreads its own levels over the same layers
            injection_schedule(
                num_layers, c.levels_for(slot), injection.first_layer, injection.last_layer
            )
            for slot in self.perceivers
        ]
        # a text-only model (soft prompt alone) injects nothing
        schedule = {layer: tuple(s[layer] for s in per_slot) for layer in next(iter(per_slot), {})}
        return Injector(
            self.lm,
            schedule,
            len(self.perceivers),
            c.prompt_tokens,
            injection.prefix_positions,
            slot_widths=[connector.num_tokens or 1 for connector in self.connectors.values()],
        )

    # --- state -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    @property
    def frozen_dropout(self) -> bool:
        """Whether ``train()`` puts the frozen LM and perceivers in training mode too (their
        dropout and drop-path on, still without gradients), as eP-ALM's code does; off by
        default, where frozen parts always stay in eval."""
        return self._frozen_dropout

    @frozen_dropout.setter
    def frozen_dropout(self, value: bool) -> None:
        self._frozen_dropout = bool(value)
        for module in self.perceivers.modules():  # nested ones too (frames -> image)
            if isinstance(module, Perceiver):
                module.dropout_in_training = self._frozen_dropout

    def train(self, mode: bool = True) -> EPALM:
        """Only the trained parts (connector, prompt, adapter modules) switch modes; frozen
        parts, LoRA's layers inside the LM among them, stay in eval unless ``frozen_dropout``
        is set."""
        renamed = hasattr(type(self.lm), "is_activation_checkpointing")  # in later 5.x releases
        kind = "activation" if renamed else "gradient"
        if mode and getattr(self.lm, f"is_{kind}_checkpointing", False):
            # HF checkpoints only modules in training mode, and its recomputation in the
            # backward pass would run outside the injection: both would be silently wrong
            raise ValueError(
                "gradient checkpointing of the frozen LM is not supported: epalm keeps the LM in "
                "eval mode and injects through hooks that its recomputation would miss; call "
                f"model.lm.{kind}_checkpointing_disable()"
            )
        super().train(mode)
        if not (mode and self.frozen_dropout):
            self.lm.eval()
            self.perceivers.eval()
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def parameter_report(self) -> ParameterReport:
        owned = self._adapter_lm_names()
        lm = [p for name, p in self.lm.named_parameters() if name not in owned]
        parts = {"lm": count_parameters(lm)}
        if self.adapter is not None:
            inside = [self.lm.get_parameter(name) for name in sorted(owned)]
            parts["adapter"] = count_parameters([*self.adapter.parameters(), *inside])
        parts["connectors"] = count_parameters(self.connectors.parameters())
        parts["perceivers"] = count_parameters(self.perceivers.parameters())
        if self.prompt is not None:
            parts["prompt"] = count_parameters(self.prompt.parameters())
        return ParameterReport(parts)

    def _adapter_lm_names(self) -> set[str]:
        return self.adapter.lm_parameter_names() if self.adapter is not None else set()

    @contextmanager
    def using_task(self, task: str | None) -> Iterator[None]:
        """Within the block, this thread's calls are task ``task``'s (one of ``task_names``): its
        prompt and its adapters. ``None`` changes nothing."""
        if task is None:
            yield
            return
        if task not in self.task_names:
            raise KeyError(f"no task {task!r}; this model was trained for {self.task_names}")
        before = self.current_task
        self._local.task = task
        try:
            with self.adapter.task(task) if self.adapter is not None else nullcontext():
                yield
        finally:
            self._local.task = before

    @property
    def task_names(self) -> list[str]:
        """The tasks this model was trained for, the default first."""
        return list(self.config.tasks) or self.config.adapter.task_names()

    @property
    def current_task(self) -> str | None:
        """The task of this thread's ``using_task`` block (None outside any)."""
        return getattr(self._local, "task", None)

    def task_for(self, slot: str, kind: str) -> str | None:
        """A multi-task model's task that does ``kind`` ("caption" / "vqa") on ``slot``'s
        media; None for a single-task model. A ValueError when it has none or several."""
        if not self.config.tasks:
            return None
        found = [n for n, t in self.config.tasks.items() if t.slot == slot and t.kind == kind]
        if not found:
            raise ValueError(
                f"this model was not trained for {kind} on {slot!r}; its tasks are "
                f"{', '.join(self.config.tasks)}"
            )
        if len(found) > 1:
            raise ValueError(
                f"this model has several {kind} tasks on {slot!r} ({', '.join(found)}): pick "
                "one with model.using_task(name)"
            )
        return found[0]

    # --- perception --------------------------------------------------------------------------
    def preprocess(
        self, media: Mapping[str, Sequence[Any]], train: bool = False
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Raw media per slot (a list of samples each) -> batched perceiver inputs."""
        self.check_slots(media)
        return {
            slot: self.perceivers[slot].prepare(samples, train=train)
            for slot, samples in media.items()
        }

    def perceive(
        self,
        media: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
        features: Mapping[str, Any] | None = None,
        text: TextContext | None = None,
    ) -> list[SlotTokens | None]:
        """Perceptual tokens per slot, ``[batch, levels, K, lm_dim]`` with a ``[batch, K]``
        mask (None where a slot has no input).

        ``media`` holds preprocessed perceiver inputs; ``features`` holds what the connector
        reads, computed earlier (a feature cache): summaries ``[batch, levels, encoder_dim]`` or
        tokens ``{"tokens", "mask"}``; they win when both are given. ``text``: the prompt's
        embeddings and mask, for a connector that fuses them (``joint-fusion``).
        """
        media, features = media or {}, features or {}
        self.check_slots({**media, **features})
        slots = []
        for slot, perceiver in self.perceivers.items():
            connector = self.connectors[slot]
            feats = features.get(slot)
            if feats is None and slot in media:
                feats = perceive_for(connector, perceiver, _on(media[slot], self.device))
            slots.append(None if feats is None else connector(_on(feats, self.device), text))
        return slots

    def prompt_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
    ) -> TextContext | None:
        """The prompt's (frozen) embeddings and mask, for connectors that fuse it; never a
        target's token (with labels, only the unlabelled real tokens count as prompt)."""
        if not any(c.uses_text for c in self.connectors.values()):
            return None
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        mask = mask.bool() if labels is None else mask.bool() & (labels == IGNORE_INDEX)
        with torch.no_grad():
            embeds = self.lm.get_input_embeddings()(input_ids)
        return embeds, mask

    def describe_slots(self) -> str:
        """What each slot adds to the LM's sequence, e.g. "image: 8 tokens (token-learner, 1
        level)" or "image: every token of its encoder (all-tokens, 1 level)"."""
        parts = []
        for slot, connector in self.connectors.items():
            k = connector.num_tokens
            tokens = "every token of its encoder" if k is None else f"{k} token{'s' * (k > 1)}"
            levels = f"{connector.levels} level{'s' * (connector.levels > 1)}"
            parts.append(f"{slot}: {tokens} ({connector.registry_name}, {levels})")
        return "; ".join(parts) or "no slot"

    def prefix_length(self, slots: Sequence[SlotTokens | None]) -> int:
        """Positions before the text for these slots: their widths and the soft prompt."""
        return sum(self.injector.widths(slots)) + self.injector.prompt_tokens

    def check_slots(self, given: Mapping[str, Any]) -> None:
        """A KeyError naming any slot in ``given`` this model has no perceiver for."""
        unknown = sorted(set(given) - set(self.perceivers))
        if unknown:
            raise KeyError(
                f"no perceiver for {unknown}; this model perceives {sorted(self.perceivers)}"
            )

    # --- the LM with its prefix -------------------------------------------------------------------
    def _with_prefix(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        slots: list[SlotTokens | None],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = input_ids.shape[0]
        for name, s in zip(self.perceivers, slots):
            if s is not None and s.tokens.shape[0] != batch:
                raise ValueError(
                    f"slot {name!r} has {s.tokens.shape[0]} samples of perception for {batch} texts"
                )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        slot_masks = [  # an absent slot is masked out; padded tokens of a present one too
            attention_mask.new_zeros(batch, width) if s is None else s.mask.to(attention_mask)
            for s, width in zip(slots, self.injector.widths(slots))
        ]
        prompt_mask = attention_mask.new_ones(batch, self.injector.prompt_tokens)
        prefix_mask = torch.cat([*slot_masks, prompt_mask], dim=1)
        prefix_ids = input_ids.new_full(
            (batch, self.prefix_length(slots)), self.tokenizer.pad_token_id
        )
        return torch.cat([prefix_ids, input_ids], dim=1), torch.cat(
            [prefix_mask, attention_mask], dim=1
        )

    def _soft_prompt(self) -> torch.Tensor | None:
        return None if self.prompt is None else self.prompt()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        media: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
        features: Mapping[str, torch.Tensor] | None = None,
        **lm_kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """The LM's output on ``input_ids`` (text only; logits align with it), loss on ``labels``."""
        slots = self.perceive(media, features, self.prompt_text(input_ids, attention_mask, labels))
        prefix = self.prefix_length(slots)
        if labels is not None:
            lm_kwargs["labels"] = self._prefixed_labels(labels, prefix)
        out = self._run_lm(input_ids, attention_mask, slots=slots, **lm_kwargs)
        out.logits = out.logits[:, prefix:]
        return out

    def target_loss(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        media: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
        features: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, int]:
        """``(summed cross-entropy, number of target tokens)`` over the labelled tokens.

        The same loss as ``forward``'s (times the count), but the LM head only runs at the
        positions that predict a target (a hook on the LM's output embeddings picks them out):
        for short answers it is a quarter of a small LM's training FLOPs otherwise. The sum
        lets a trainer average over every target token of a batch split across processes.
        """
        if labels is None:
            raise ValueError("target_loss needs labels")
        slots = self.perceive(media, features, self.prompt_text(input_ids, attention_mask, labels))
        # position p predicts token p + 1
        targets = self.predicted_labels(labels, self.prefix_length(slots))
        predicting = targets != IGNORE_INDEX
        rows = nn.functional.pad(predicting, (0, 1))  # the last position predicts nothing
        with _head_only_at(self.lm, rows.to(self.device)):
            out = self._run_lm(input_ids, attention_mask, slots=slots)
        count = int(predicting.sum())
        if out.logits.shape[:-1] != (count,):
            raise RuntimeError(
                f"the LM returned logits of shape {tuple(out.logits.shape)} where its head ran on "
                f"{count} positions: does this LM change its logits' shape after its head?"
            )
        loss = nn.functional.cross_entropy(
            out.logits.float(), targets[predicting].to(out.logits.device), reduction="sum"
        )
        return loss, count

    def predicted_labels(
        self, labels: torch.Tensor, prefix_length: int | None = None
    ) -> torch.Tensor:
        """The label each position of the LM's sequence ([prefix][text], minus its last
        position) predicts: the first text token is predicted from the prefix's last position,
        so it is trained even when neither a prompt nor a BOS token comes before it.
        ``prefix_length``: the prefix's (default: the nominal one, every slot at its K)."""
        return self._prefixed_labels(labels, prefix_length)[:, 1:]

    def _prefixed_labels(self, labels: torch.Tensor, prefix_length: int | None) -> torch.Tensor:
        """Labels over the LM's whole sequence: none on the prefix."""
        length = self.injector.prefix_length if prefix_length is None else prefix_length
        prefix = labels.new_full((labels.shape[0], length), IGNORE_INDEX)
        return torch.cat([prefix, labels], 1)

    def target_count(self, labels: torch.Tensor) -> int:
        """How many target tokens ``target_loss`` (and ``forward``'s loss) averages over."""
        return int((self.predicted_labels(labels) != IGNORE_INDEX).sum())

    def _run_lm(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        media: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
        features: Mapping[str, Any] | None = None,
        *,
        slots: list[SlotTokens | None] | None = None,
        **lm_kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """The LM on ``[prefix][text]``; ``slots`` when already perceived, else from media or
        features."""
        if slots is None:
            text = self.prompt_text(input_ids, attention_mask, None)
            slots = self.perceive(media, features, text)
        ids, mask = self._with_prefix(input_ids, attention_mask, slots)
        # Positions as HF's generate derives them, so training and generation agree.
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        lm_kwargs.setdefault("use_cache", False)
        if "position_ids" in self._lm_takes:
            lm_kwargs["position_ids"] = positions
        with self.injector.inject(slots, self._soft_prompt()):
            return self.lm(input_ids=ids, attention_mask=mask, **lm_kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        media: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
        features: Mapping[str, torch.Tensor] | None = None,
        **generate_kwargs: Any,
    ) -> Any:
        """New token ids after left-padded prompts, by the LM's own ``generate`` (any decoding).

        Returns a tensor, or HF's generate output (its ``sequences`` cut to the new tokens) when
        ``return_dict_in_generate=True``.
        """
        slots = self.perceive(media, features, self.prompt_text(input_ids, attention_mask, None))
        ids, mask = self._with_prefix(input_ids, attention_mask, slots)
        options = {
            "do_sample": False,
            "max_new_tokens": DEFAULT_GENERATION["max_new_tokens"],
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
            **generate_kwargs,
        }
        with self.injector.inject(slots, self._soft_prompt()):
            out = self.lm.generate(input_ids=ids, attention_mask=mask, **options)
        if isinstance(out, torch.Tensor):
            return out[:, ids.shape[1] :]
        out.sequences = out.sequences[:, ids.shape[1] :]
        return out

    # --- text --------------------------------------------------------------------------------------
    def prompt_for(self, question: str | None = None, task: str | None = None) -> str:
        """The text prompt of ``task`` (default: the current one): its VQA template around a
        question, else its caption prompt."""
        spec = self.config.tasks.get(task or self.current_task or "")
        text = self.config.text
        if spec is not None:
            template = spec.prompt
        else:
            template = text.caption_prompt if question is None else text.vqa_prompt
        return template if question is None else template.format(question=question)

    def encode_targets(
        self,
        targets: Sequence[str],
        questions: Sequence[str | None] | None = None,
        task: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """A training batch in this model's prompt format (``task``'s, default the current one):
        captions, or answers to ``questions``."""
        questions = [None] * len(targets) if questions is None else questions
        prompts = [self.prompt_for(q, task) for q in questions]
        return encode_training(self.tokenizer, prompts, targets, self.config.text.loss_on_prompt)

    # --- convenience ---------------------------------------------------------------------------
    def caption(
        self, media: Media | Mapping[str, Media], **generate_kwargs: Any
    ) -> str | list[str]:
        """Caption one sample (or a list of samples) of raw media."""
        batch, single = self._as_batch(media)
        texts = self._respond(batch, "caption", [None] * _batch_size(batch), generate_kwargs)
        return texts[0] if single else texts

    def answer(
        self,
        media: Media | Mapping[str, Media],
        question: str | Sequence[str],
        **generate_kwargs: Any,
    ) -> str | list[str]:
        """Answer a question about one sample (or one question per sample of a list)."""
        batch, single = self._as_batch(media)
        questions = [question] * _batch_size(batch) if isinstance(question, str) else list(question)
        texts = self._respond(batch, "vqa", questions, generate_kwargs)
        return texts[0] if single else texts

    def _as_batch(self, media: Media | Mapping[str, Media]) -> tuple[dict[str, list[Any]], bool]:
        """``media`` for the only slot, or a dict per slot; a list is a batch, anything else one sample."""
        if not isinstance(media, Mapping):
            if len(self.perceivers) != 1:
                raise ValueError(
                    f"this model perceives {sorted(self.perceivers)}: pass media as a dict by slot"
                )
            media = {next(iter(self.perceivers)): media}
        single = not any(isinstance(m, list | tuple) for m in media.values())
        return {
            slot: list(m) if isinstance(m, list | tuple) else [m] for slot, m in media.items()
        }, single

    def _respond(
        self,
        batch: dict[str, list[Any]],
        kind: str,
        questions: list[str | None],
        generate_kwargs: dict[str, Any],
    ) -> list[str]:
        """Generate for ``batch`` as the current task, else (a multi-task model) as the task
        that does ``kind`` on the batch's slot."""
        task = self.current_task or (self.task_for(next(iter(batch)), kind) if batch else None)
        with self.using_task(task):
            prompts = [self.prompt_for(q) for q in questions]
            text = encode_prompts(self.tokenizer, prompts)
            new = self.generate(
                **{k: v.to(self.device) for k, v in text.items()},
                media=self.preprocess(batch),
                **{**DEFAULT_GENERATION, **generate_kwargs},
            )
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    # --- checkpoints ------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the trained weights (safetensors), config.json and the tokenizer, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = {k: v.contiguous().cpu() for k, v in self.trainable_state_dict().items()}
        atomic_write(
            directory / WEIGHTS_NAME, lambda p: save_file(weights, p, metadata={"format": "pt"})
        )
        portable = {
            **self.config.to_dict(),
            "model_cache": None,
            "frozen_digests": self.frozen_digests(),
        }
        config_text = json.dumps(portable, indent=2) + "\n"
        atomic_write_text(directory / CONFIG_NAME, config_text)
        with tempfile.TemporaryDirectory(dir=directory) as staging:
            for name in self.tokenizer.save_pretrained(staging):
                os.replace(name, directory / Path(name).name)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, *, frozen_check: str = "warn", **kwargs: Any
    ) -> EPALM:
        """Rebuild a model saved by ``save_pretrained``: frozen parts from their sources, trained
        weights from the file.

        The frozen parts rebuilt are compared with the digests the checkpoint recorded:
        ``frozen_check="warn"`` logs a loud warning for each that differs (another conversion,
        hub revision or dtype than the model was trained with), ``"error"`` refuses it,
        ``"skip"`` spares the hashing.
        """
        if frozen_check not in ("warn", "error", "skip"):
            raise ValueError(f"frozen_check={frozen_check!r}: choose warn, error or skip")
        directory = Path(directory)
        config = cls.saved_config(directory)
        if "tokenizer" not in kwargs and (directory / "tokenizer_config.json").is_file():
            kwargs["tokenizer"] = AutoTokenizer.from_pretrained(directory)
        model = cls(config, **kwargs)
        model.load_trained(directory / WEIGHTS_NAME)
        if frozen_check != "skip":
            model._check_frozen(directory, strict=frozen_check == "error")
        return model

    def frozen_digests(self) -> dict[str, str]:
        """A digest of each frozen part's weights: ``lm`` and ``perceivers.<slot>``."""
        digests = {"lm": state_sha256(self._frozen_lm_state())}
        for slot, perceiver in self.perceivers.items():
            digests[f"perceivers.{slot}"] = weights_sha256(perceiver)
        return digests

    def _frozen_lm_state(self) -> dict[str, torch.Tensor]:
        """The LM's frozen tensors under their own names: without what an adapter added or
        unfroze, so the digest is the plain LM's."""
        skip = self._trained_in_lm | self._adapter_lm_names()
        rename = self.adapter.frozen_name if self.adapter is not None else str
        return {rename(k): v for k, v in self.lm.state_dict().items() if k not in skip}

    def _check_frozen(self, directory: Path, strict: bool) -> None:
        recorded = self.config.frozen_digests
        if not recorded:
            log.warning(
                "%s records no digest of its frozen parts: they cannot be checked", directory
            )
            return
        now = self.frozen_digests()
        differ = sorted(k for k in recorded.keys() | now.keys() if recorded.get(k) != now.get(k))
        if not differ:
            return
        message = (
            f"{directory}: the frozen {', '.join(differ)} rebuilt here differ from the weights "
            f"this model was trained with ({self._frozen_names(differ)}); its outputs will not "
            "be the trained model's. Name the same weights (a local directory) or pass "
            "frozen_check='skip' to accept them"
        )
        if strict:
            raise ValueError(message)
        log.warning("%s", message)

    def _frozen_names(self, parts: list[str]) -> str:
        names = []
        for part in parts:
            if part == "lm":
                names.append(f"lm {self.config.lm.model or 'from model_config'}")
            elif part.removeprefix("perceivers.") in self.config.perceivers:
                spec = self.config.perceivers[part.removeprefix("perceivers.")]
                names.append(f"{part} {spec.name} {spec.kwargs.get('model', '')}".strip())
        return "; ".join(names)

    @staticmethod
    def saved_config(directory: str | os.PathLike) -> EPALMConfig:
        """The config of a model saved by ``save_pretrained`` (nothing is built)."""
        directory = Path(directory)
        for required in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / required).is_file():
                raise MissingFileError(
                    f"{directory} is not an epalm checkpoint: {required} is missing"
                )
        return EPALMConfig.load(directory / CONFIG_NAME)

    def load_trained(self, path: str | os.PathLike) -> None:
        """Load trained weights, insisting they are exactly this model's trainable tensors."""
        weights = load_file(str(path), device=str(self.device))
        expected = set(self.trainable_state_dict())
        missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
        if missing or unexpected:
            raise ValueError(
                f"{path}: does not fit this model (missing {missing}, unexpected {unexpected})"
            )
        self.load_state_dict(weights, strict=False)


def perceive_for(
    connector: Connector, perceiver: Perceiver, inputs: Mapping[str, torch.Tensor]
) -> torch.Tensor | dict[str, torch.Tensor]:
    """What ``connector`` reads, computed by the frozen ``perceiver``: its summaries, or the
    tokens of the levels it reads in float16, as the feature cache stores them (so training from
    media and from the cache see the same numbers)."""
    if connector.reads == "tokens":
        return token_features(perceiver, connector.levels, **inputs)
    with torch.no_grad():
        return perceiver(**inputs)


def _on(features: Any, device: torch.device) -> Any:
    """Features (a tensor, or a mapping of them) on ``device``."""
    if isinstance(features, Mapping):
        return {key: value.to(device) for key, value in features.items()}
    return features.to(device)


def _load_lm(config: EPALMConfig) -> nn.Module:
    lm = config.lm
    return load_model(
        AutoModelForCausalLM, lm.model, lm.model_config, lm.seed, dtype=getattr(torch, lm.dtype)
    )


def _load_tokenizer(config: EPALMConfig) -> PreTrainedTokenizerBase:
    if config.lm.tokenizer is None and config.lm.model is None:
        raise ValueError(
            "the LM is built from model_config: name a tokenizer in lm.tokenizer or pass tokenizer="
        )
    return load_tokenizer(config.lm.tokenizer or config.lm.model)


@contextmanager
def _head_only_at(lm: nn.Module, rows: torch.Tensor) -> Iterator[None]:
    """Within the block, the LM head of calls from this thread runs on ``rows`` ([batch, seq]
    bool) of its input only, and the LM returns their logits as ``[rows, vocab]``. A hook, not
    ``logits_to_keep``, whose forms differ across transformers releases."""
    thread = threading.get_ident()

    def select(module: nn.Module, args: tuple) -> tuple | None:
        if threading.get_ident() != thread:
            return None
        hidden = args[0]
        if hidden.shape[:2] != rows.shape:
            raise RuntimeError(
                f"the LM head received {tuple(hidden.shape)}; epalm expected the hidden states "
                f"of every position {tuple(rows.shape)}"
            )
        return (hidden[rows], *args[1:])

    handle = lm.get_output_embeddings().register_forward_pre_hook(select)
    try:
        yield
    finally:
        handle.remove()


# What epalm passes to every LM call by name. The LM's forward also takes **kwargs, which would
# swallow a renamed argument without a word, so the names are checked once, when it is loaded.
_LM_ARGUMENTS = ("input_ids", "attention_mask", "position_ids", "labels", "use_cache")
# LMs whose positions come from ALiBi, not position ids
_NO_POSITION_IDS = frozenset({"bloom", "mpt"})


def _lm_arguments(lm: nn.Module) -> frozenset[str]:
    """The named arguments of the LM's forward, insisting on the ones epalm relies on."""
    names = frozenset(inspect.signature(lm.forward).parameters)
    needed = _LM_ARGUMENTS
    if lm.config.model_type in _NO_POSITION_IDS:
        needed = tuple(n for n in needed if n != "position_ids")
    missing = [name for name in needed if name not in names]
    if missing:
        raise TypeError(
            f"{type(lm).__name__}.forward takes no {', '.join(missing)}: epalm passes "
            f"{', '.join(_LM_ARGUMENTS)} by name (a transformers version epalm does not know?)"
        )
    return names


@contextmanager
def _own_generator(seed: int | None) -> Iterator[None]:
    """torch's CPU generator seeded with ``seed`` inside the block and restored after it."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _check_promised(what: str, promised: dict[str, int | None], actual: dict[str, int]) -> None:
    wrong = {k: (v, actual[k]) for k, v in promised.items() if v is not None and v != actual[k]}
    if wrong:
        details = ", ".join(f"{k} {want} but it has {got}" for k, (want, got) in wrong.items())
        raise ValueError(f"{what}: the config says {details}; is the model name right?")


def _frames_for(cls: type[Connector], perceiver: Perceiver) -> dict[str, int]:
    """A connector that can pool frame by frame (it takes ``frames``) is told how many frames
    the perceiver's tokens hold."""
    if "frames" not in inspect.signature(cls).parameters:
        return {}
    return {"frames": perceiver.token_frames}


def _check_levels(slot: str, perceiver: Perceiver, levels: int) -> None:
    if levels > perceiver.num_levels:
        raise ValueError(
            f"connector.levels={levels} but perceiver {slot!r} ({type(perceiver).__name__}) has only "
            f"{perceiver.num_levels} levels; lower connector.levels or set "
            f"connector.slot_levels.{slot}"
        )


def count_parameters(params: Any) -> tuple[int, int]:
    """(trainable, total) numbers of parameters."""
    params = list(params)
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _batch_size(batch: Mapping[str, list[Any]]) -> int:
    sizes = {len(v) for v in batch.values()}
    if len(sizes) != 1:
        raise ValueError(f"every slot needs the same number of samples, got {sorted(sizes)}")
    return sizes.pop()
