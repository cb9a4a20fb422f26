"""``epalm train | eval | predict | cache``: each job from its checked settings."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from epalm.atomic import atomic_write_text
from epalm.errors import MissingFileError
from epalm.training.compose import to_yaml
from epalm.training.settings import RunSettings, SettingsError

log = logging.getLogger("epalm")


def train(settings: RunSettings, resolved: dict[str, Any]) -> Path:
    accelerator = _accelerator(settings, tracking=True)
    _start(settings, resolved, accelerator, Path(settings.run_dir), "train")
    from epalm.training.trainer import Trainer

    return Trainer(settings, accelerator).fit()


def evaluate(settings: RunSettings, resolved: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Score the saved model on ``eval.split`` (and blind) for every task it was trained for;
    writes ``<run_dir>/eval/<split>`` (a multi-task run: ``<run_dir>/eval/<task>/<split>``)."""
    from epalm.objectives import objective_for
    from epalm.training.task_data import load_task_data

    accelerator = _accelerator(settings)
    out_dir = Path(settings.run_dir) / "eval"
    _start(settings, resolved, accelerator, out_dir / settings.eval.split, "eval")
    model = _load_model(settings, accelerator)
    objective = objective_for(settings)
    tasks = [
        load_task_data(
            name,
            run,
            model,
            accelerator,
            multitask=bool(settings.jobs),
            test_only=True,
            objective=objective,
        )
        for name, run in settings.task_runs().items()
    ]
    rows = objective.evaluate(model, tasks, out_dir, checkpoint=_checkpoint_dir(settings))
    for name, row in rows.items():
        print(f"{name}: {row['summary']}" if settings.jobs else row["summary"])
    return rows


def predict(settings: RunSettings, resolved: dict[str, Any]) -> dict[str, str]:
    """Caption, or answer ``predict.question`` about, each file of ``predict.media``."""
    if settings.task.objective != "generative":
        raise SettingsError(
            f"task={settings.task.name} trains a model that searches, not one that writes: "
            "predict captions or answers with a caption or VQA model"
        )
    if not settings.predict.media:
        raise ValueError("predict.media is empty: give files, e.g. predict.media=[cat.jpg,dog.png]")
    missing = [m for m in settings.predict.media if not Path(m).is_file()]
    if missing:
        raise MissingFileError(f"predict.media: no such file: {', '.join(missing)}")
    accelerator = _accelerator(settings)
    _setup_logging(settings, accelerator.is_main_process, None)
    model = _load_model(settings, accelerator)
    from epalm.data.dataset import decode

    # a multi-task model perceives several modalities: modality=... picks the slot
    slot = (
        settings.modality if settings.modality in model.perceivers else next(iter(model.perceivers))
    )
    try:
        model.task_for(slot, "caption" if settings.predict.question is None else "vqa")
    except ValueError as err:
        raise SettingsError(f"{settings.checkpoint or settings.run_dir}: {err}") from None
    media = [decode(m, model.perceivers[slot], train=False) for m in settings.predict.media]
    generation = settings.eval.generation
    options = {"num_beams": generation.num_beams, "max_new_tokens": generation.max_new_tokens}
    if settings.predict.question is None:
        texts = model.caption({slot: media}, **options)
    else:
        texts = model.answer({slot: media}, settings.predict.question, **options)
    results = {path: " ".join(text.split()) for path, text in zip(settings.predict.media, texts)}
    for path, text in results.items():
        print(f"{path}\t{text}")  # one line per file
    return results


def retrieve(settings: RunSettings, resolved: dict[str, Any]) -> dict[str, list[tuple[str, float]]]:
    """Search the evaluation split's gallery: each of ``retrieve.text``'s queries for its best
    media, each of ``retrieve.media``'s files for its best captions. Prints one line per hit
    (query, rank, cosine, key); the gallery's indexes are built once, beside the checkpoint."""
    if settings.task.objective != "contrastive":
        raise SettingsError(
            f"epalm retrieve searches with a retrieval model (task=retrieval), not task="
            f"{settings.task.name}"
        )
    options = settings.retrieve
    if not options.text and not options.media:
        raise SettingsError('give retrieve.text=["a query"] and/or retrieve.media=[file, ...]')
    missing = [m for m in options.media if not Path(m).is_file()]
    if missing:
        raise MissingFileError(f"retrieve.media: no such file: {', '.join(missing)}")
    accelerator = _accelerator(settings)
    _setup_logging(settings, accelerator.is_main_process, None)
    model = _load_model(settings, accelerator)
    indexes = _gallery_indexes(settings, model, accelerator)
    from epalm.data.dataset import decode

    searches = [(text, model.encode_text([text]), indexes.media) for text in options.text]
    searches += [
        (path, model.encode_media([decode(path, model.perceiver, train=False)]), indexes.text)
        for path in options.media
    ]
    results = {}
    for query, embedding, index in searches:
        hits = index.search(embedding.cpu(), k=options.k)
        results[query] = list(zip(hits.keys[0], hits.scores[0].tolist()))
        for rank, (key, cosine) in enumerate(results[query], start=1):
            print(f"{query}\t{rank}\t{cosine:.4f}\t{key}")
    return results


def _gallery_indexes(settings: RunSettings, model: Any, accelerator: Any) -> Any:
    """The indexes of the evaluation split's media and captions, saved beside the checkpoint
    (by training's final evaluation, or here the first time)."""
    from epalm.objectives import objective_for
    from epalm.objectives.contrastive import embed_gallery, index_dir, save_indexes
    from epalm.retrieval.search import GalleryIndexes
    from epalm.training.task_data import load_task_data

    directory = index_dir(_checkpoint_dir(settings), settings)
    if GalleryIndexes.saved_in(directory):
        return GalleryIndexes.load(directory)
    task = load_task_data(
        settings.task_id, settings, model, accelerator, multitask=False, test_only=True,
        objective=objective_for(settings),
    )  # fmt: skip
    gallery, items, texts = embed_gallery(model, task, task.test, "indexing")
    return save_indexes(directory, gallery, items, texts, settings.retrieve.index)


def cache(settings: RunSettings, resolved: dict[str, Any]) -> None:
    """Fill the feature cache for every split of the data (all processes share the work)."""
    from epalm.encoders import build_perceiver
    from epalm.training.data import load_split
    from epalm.training.features import features_for
    from epalm.zoo.cache import using_cache

    accelerator = _accelerator(settings)
    _setup_logging(settings, accelerator.is_main_process, None)
    with using_cache(settings.model_cache):
        perceiver = build_perceiver(settings.encoder.name, **settings.encoder.kwargs)
    perceiver.to(accelerator.device)
    samples = [s for split in settings.data.splits for s in load_split(settings, split)]
    features = features_for(settings, perceiver, samples, accelerator)
    print(f"{len(features)} files cached for {settings.encoder.name} ({settings.data.name})")


def demo(settings: RunSettings, resolved: dict[str, Any]) -> None:
    """Serve saved models in a web page until interrupted."""
    _setup_logging(settings, True, None)
    from epalm.demo import serve

    serve(settings)


def _load_model(settings: RunSettings, accelerator: Any) -> Any:
    from epalm.objectives import objective_for

    directory = _checkpoint_dir(settings)
    if not (directory / "config.json").is_file():
        raise MissingFileError(
            f"{directory} holds no trained model; train one first (`epalm train "
            f"modality={settings.modality} task={settings.task.name}`) or set checkpoint=DIR"
        )
    log.info("loading %s", directory)
    model = objective_for(settings).load_model(directory)
    for name, run in settings.task_runs().items():
        if run.modality not in model.perceivers:
            raise ValueError(
                f"{directory} perceives {sorted(model.perceivers)}, not {run.modality} ({name})"
            )
    return model.to(accelerator.device).eval()


def _checkpoint_dir(settings: RunSettings) -> Path:
    return Path(settings.checkpoint or Path(settings.run_dir) / "final")


def _accelerator(settings: RunSettings, tracking: bool = False) -> Any:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    # As the loss falls, backward passes through the frozen LM carry ever smaller gradients;
    # once they are subnormal, x86 CPUs slow down many times over. Flushing them to zero costs
    # nothing in accuracy (they are below 1.2e-38) and keeps the step time flat.
    torch.set_flush_denormal(True)

    precision = _precision(settings.train.mixed_precision)
    options: dict[str, Any] = {"mixed_precision": precision, "cpu": _cpu_processes()}
    if len(settings.task_runs()) > 1:
        # a step trains one task: the other slots' connectors (and per-task adapters) get no
        # gradient, which DDP must be told to expect
        options["kwargs_handlers"] = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    if tracking:
        options["log_with"] = "tensorboard"
        options["project_config"] = ProjectConfiguration(
            project_dir=settings.run_dir, logging_dir=str(Path(settings.run_dir) / "tensorboard")
        )
    return Accelerator(**options)


def _cpu_processes() -> bool:
    """Several processes on a machine without a GPU: accelerate runs them on gloo only when
    told ``cpu``, else each would train alone."""
    import torch

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def _precision(choice: str) -> str:
    """``auto``: bf16 on GPUs that support it, else fp16 on GPUs, fp32 on CPUs: bf16 is faster
    only on CPUs with bf16 instructions (AVX512-BF16, AMX), and it changes the numbers, so
    there it is asked for (``bf16``), not assumed."""
    if choice != "auto":
        return choice
    import torch

    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _start(
    settings: RunSettings, resolved: dict[str, Any], accelerator: Any, out_dir: Path, job: str
) -> None:
    """Save the resolved config in ``out_dir`` (the run directory for training, the eval
    directory for evaluation, so scoring never overwrites the training config), and a
    multi-task run's jobs in ``out_dir/tasks/<task>.yaml``; print it, and log to
    ``out_dir/<job>.log``."""
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.yaml", to_yaml(resolved))
        for name, composed in settings.job_configs.items():  # a multi-task run's jobs
            (out_dir / "tasks").mkdir(exist_ok=True)
            atomic_write_text(out_dir / "tasks" / f"{name}.yaml", to_yaml(composed))
    accelerator.wait_for_everyone()
    _setup_logging(settings, accelerator.is_main_process, out_dir / f"{job}.log")
    if accelerator.is_main_process:
        print(to_yaml(resolved), file=sys.stderr)
    log.info("epalm %s: %s (config.yaml there holds the resolved config)", job, out_dir)


def _setup_logging(settings: RunSettings, main: bool, path: Path | None) -> None:
    """Readable lines on stderr at ``log_level`` (main process), and always at INFO in the run's
    log file."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger("epalm")
    root.setLevel(min(logging.INFO, logging.getLevelName(settings.log_level)))
    root.handlers.clear()
    root.propagate = False
    if not main:
        return
    console = logging.StreamHandler()
    console.setLevel(settings.log_level)
    handlers = [console]
    if path is not None:
        handlers.append(logging.FileHandler(path))
        handlers[-1].setLevel(logging.INFO)
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
