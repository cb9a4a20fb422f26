"""Hydra composition of a job's config from the groups shipped in ``epalm/configs``.

The compose API (not ``@hydra.main``) keeps the CLI in charge: no working-directory change, no
Hydra output folders, our own ``--help`` and errors without a traceback.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from omegaconf import OmegaConf

from epalm.presets import CONFIG_DIR, preset_names
from epalm.training.settings import RunSettings, SettingsError, check, from_container

PRIMARY = "epalm"
GROUPS = (
    "modality", "task", "lm", "encoder", "connector", "adapter", "align", "text_encoder", "data",
    "experiment",
)  # fmt: skip


class ComposeError(ValueError):
    """An override Hydra cannot apply: an unknown group, choice or key."""


def compose(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The fully resolved config for ``overrides`` (``group=choice``, ``key=value``, ``+key=v``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=PRIMARY, overrides=list(overrides))
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ComposeError(_first_lines(str(err))) from None
    _check_data_choice(overrides, resolved)
    return resolved


def _check_data_choice(overrides: Sequence[str], resolved: dict[str, Any]) -> None:
    """An experiment that names its own data (the image retrieval job reads scenes) must not
    quietly overrule a ``data=`` the user chose."""
    chosen = [o.partition("=")[2] for o in overrides if o.startswith("data=")]
    if not chosen or chosen[-1] not in preset_names("data"):
        return
    wanted = OmegaConf.load(CONFIG_DIR / "data" / f"{chosen[-1]}.yaml").get("name")
    if wanted is not None and resolved["data"]["name"] != wanted:
        raise ComposeError(
            f"data={chosen[-1]}, but the run's experiment reads data.name="
            f"{resolved['data']['name']}; add data.name={wanted} to read {chosen[-1]}"
        )


def settings(overrides: Sequence[str] = ()) -> tuple[RunSettings, dict[str, Any]]:
    """Checked settings and the resolved config they came from (saved with the run); a
    multi-task run's jobs are composed too (``RunSettings.jobs``)."""
    resolved = compose(overrides)
    run = from_container(resolved)
    for name, task_overrides in run.multitask.tasks.items():
        run.jobs[name], run.job_configs[name] = _job(run, name, overrides, task_overrides)
    _check_slots(run)
    return run, resolved


def _job(
    run: RunSettings, name: str, overrides: Sequence[str], task_overrides: Sequence[str]
) -> tuple[RunSettings, dict[str, Any]]:
    """Task ``name`` of a multi-task run: its single-task job, composed from the run's own
    overrides (but its experiment and multitask.*) and then the task's, which win. The job
    brings its data, encoder and evaluation; the model, optimisation and validation are the
    run's."""
    given = {_key(o) for o in task_overrides}
    inherited = [o for o in overrides if _key(o) not in given and not _run_only(_key(o))]
    try:
        resolved = compose([*inherited, *task_overrides])
        own = from_container(resolved, checked=False)  # checked with the run's model below
        job = dataclasses.replace(
            run,
            modality=own.modality,
            task=own.task,
            data=own.data,
            encoder=own.encoder,
            # its slot's levels are its own job's (Whisper tiny's 4 beside an image encoder's 6)
            connector=dataclasses.replace(
                run.connector, levels=own.connector.levels_for(own.modality), slot_levels={}
            ),
            eval=own.eval,
            multitask=dataclasses.replace(run.multitask, tasks={}, weights=None),
            jobs={},
            job_configs={},
        )
        check(job)  # e.g. connector.levels against this job's encoder
    except (ComposeError, SettingsError) as err:
        raise SettingsError(f"multitask.tasks.{name}: {err}") from None
    return job, resolved


def _check_slots(run: RunSettings) -> None:
    """One encoder per modality, and one number of levels: a multi-task model has one slot for
    each."""
    slots: dict[str, tuple[str, RunSettings]] = {}
    for name, job in run.jobs.items():
        first_name, first = slots.setdefault(job.modality, (name, job))
        if first.encoder != job.encoder:
            raise SettingsError(
                f"multitask.tasks: {first_name} and {name} are both {job.modality} tasks but use "
                f"different encoders ({first.encoder.name} and {job.encoder.name}); a multi-task "
                "model has one encoder per modality"
            )
        if first.connector.levels != job.connector.levels:
            raise SettingsError(
                f"multitask.tasks: {first_name} and {name} are both {job.modality} tasks but use "
                f"connector.levels={first.connector.levels} and {job.connector.levels}; a "
                "multi-task model has one slot per modality"
            )


def _run_only(key: str) -> bool:
    """Overrides a job does not inherit: the run's experiment and its task list."""
    return key == "experiment" or key.split(".")[0] == "multitask"


def _key(override: str) -> str:
    """``+train.lr=1`` -> ``train.lr``."""
    return override.split("=", 1)[0].lstrip("+~")


def to_yaml(resolved: dict[str, Any]) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(resolved))


def choices() -> dict[str, list[str]]:
    """Every config group and its choices."""
    return {group: preset_names(group) for group in GROUPS}


def help_text(command: str) -> str:
    lines = [
        f"usage: epalm {command} [group=choice ...] [key=value ...]",
        "",
        _PURPOSE[command],
        "",
        "Config groups (group=choice):",
    ]
    lines += [f"  {group:<10} {', '.join(names)}" for group, names in choices().items()]
    if command == "demo":
        lines += ["", "Demo keys (demo.key=value), with their defaults:"]
        for key, value in compose()["demo"].items():
            lines.append(f"  demo.{key}={value if isinstance(value, str) else json.dumps(value)}")
    lines += [
        "",
        "Any key of the resolved config can be set, e.g. train.max_steps=100 train.lr=1e-3",
        "run_dir=runs/mine eval.blind=false; +key=value adds a key. The resolved config is",
        f"printed at start and saved as <run_dir>/config.yaml. Defaults: {CONFIG_DIR}/{PRIMARY}.yaml",
        "",
        "Examples:",
        "  epalm train modality=audio task=caption",
        "  epalm train modality=video task=vqa train.max_steps=50 eval.blind=false",
        "  epalm train data=manifest data.root=DIR  (your own train/val/test.jsonl; any modality:",
        "                                           modality=video; check them: epalm data check DIR)",
        "  epalm train experiment=embedded-multitask adapter=lora  (one model, the six main jobs)",
        "  accelerate launch -m epalm train modality=image  (many processes or GPUs)",
        "  epalm demo  (every runs/*/final in a web page; demo.port=8080 demo.auth=me:secret)",
    ]
    return "\n".join(lines)


_PURPOSE = {
    "train": "Train the connector (the LM and the encoder stay frozen; adapter=NAME adds modules\n"
    "inside the LM), evaluate the result on the test split with and without the perception,\n"
    "and save <run_dir>/final.",
    "eval": "Score a saved model (checkpoint=DIR, default <run_dir>/final) on eval.split,\n"
    "and blind (perception removed) unless eval.blind=false.",
    "predict": "Caption, or answer predict.question about, the files in predict.media=[a,b]\n"
    "with a saved model (checkpoint=DIR, default <run_dir>/final).",
    "demo": "Serve saved models in a web page: checkpoint=DIR (or demo.checkpoints=[A,B]),\n"
    "by default every runs/*/final; on 127.0.0.1 unless demo.host, demo.share or demo.auth\n"
    "say otherwise (the demo.* keys below; docs/demo.md explains them).",
    "retrieve": "Search with a retrieval model (task=retrieval; checkpoint=DIR, default\n"
    "<run_dir>/final): retrieve.text=[queries] finds the evaluation split's best-fitting media,\n"
    "retrieve.media=[files] its best-fitting captions. The gallery's index is built once and\n"
    "saved beside the checkpoint.",
    "cache": "Compute the frozen encoder's features of every split of the data once, into\n"
    "the feature cache that training and evaluation read.",
}


def _first_lines(message: str, limit: int = 12) -> str:
    # Hydra appends the whole config search path to some errors; a person needs the first part.
    kept = []
    for line in message.strip().splitlines():
        if line.startswith("Config search path"):
            break
        kept.append(line)
    return "\n".join(kept[:limit])
