"""Training checkpoints that survive a kill: each one is a directory written beside its final
place and renamed into it, so ``checkpoints/step-*`` only ever holds complete ones.

A checkpoint holds the trained weights as a loadable model (``model/``, what ``save_pretrained``
writes), and ``state.pt`` with the optimizer, scheduler and RNG states, read back with
``weights_only=True``; ``trainer_state.json`` holds the step and the best validation score.
With fp16 the gradient scaler's state is saved too, and the CUDA generators' states on a GPU,
so a resumed run goes on bit-identically there as well.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from epalm.model import WEIGHTS_NAME

PREFIX = "step-"
STATE = "state.pt"
TRAINER_STATE = "trainer_state.json"
MODEL = "model"


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(
    run_dir: str | os.PathLike,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    scaler: Any | None = None,
) -> Path:
    """Write ``checkpoints/step-NNNNNNN`` atomically and return it; ``scaler``: fp16's
    gradient scaler, when there is one."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{trainer_state['step']:07d}"

    def write(staging: Path) -> None:
        model.save_pretrained(staging / MODEL)
        state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
        }
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        torch.save(state, staging / STATE)
        (staging / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2) + "\n")

    publish_dir(final, write)
    return final


def load_checkpoint(
    path: str | os.PathLike,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any | None = None,
) -> dict[str, Any]:
    """Restore a checkpoint into ``model``, ``optimizer``, ``scheduler``, ``scaler`` and the
    RNGs; returns the trainer state (step, best score, ...)."""
    path = Path(path)
    model.load_trained(path / MODEL / WEIGHTS_NAME)
    state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if (scaler is None) != ("scaler" not in state):
        raise ValueError(
            f"{path}: saved {'with' if 'scaler' in state else 'without'} an fp16 gradient "
            f"scaler, resumed {'with' if scaler is not None else 'without'} one: resume with "
            "the train.mixed_precision it was saved with"
        )
    if scaler is not None:
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return json.loads((path / TRAINER_STATE).read_text())


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = _checkpoints(run_dir)
    return found[-1] if found else None


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest checkpoints (the best model is kept apart)."""
    old = _checkpoints(run_dir)[:-keep_last]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return old


def publish_model(model: Any, directory: str | os.PathLike) -> Path:
    """``model.save_pretrained`` into ``directory`` as one atomic replacement."""
    directory = Path(directory)
    publish_dir(directory, model.save_pretrained)
    return directory


def publish_dir(final: Path, write: Any) -> None:
    """Fill a staging directory beside ``final`` with ``write(staging)``, then swap it in. An
    existing ``final`` is moved aside first and removed after, so a reader finds the old or
    the new directory whole (or, for an instant, none)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        write(staging)
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
        os.replace(staging, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss_value = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss_value))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda", [])
    if cuda and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            raise ValueError(
                f"the checkpoint holds the RNG states of {len(cuda)} GPUs, this machine has "
                f"{torch.cuda.device_count()}: resume on as many"
            )
        torch.cuda.set_rng_state_all(cuda)


def _checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / TRAINER_STATE).is_file()
    )
