"""Training checkpoints hold everything a bit-identical resume needs, fp16's gradient scaler
included, and the schedule follows only the optimizer steps that happened."""

import pytest
import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from torch import nn

from epalm.testing import tiny_model
from epalm.training import checkpoint as ckpt
from epalm.training.optim import cosine_schedule
from epalm.training.trainer import step_scheduler


@pytest.fixture(autouse=True)
def _accelerator():
    return Accelerator(cpu=True)  # the state accelerate's optimizer wrapper reads


def _parts():
    model = tiny_model()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    scheduler = cosine_schedule(optimizer, total_steps=10, warmup_steps=2, min_lr=1e-6)
    return model, optimizer, scheduler


def _overflow(scaler):
    """One scaled step whose gradient is infinite: the scaler skips it and halves its scale."""
    weight = nn.Parameter(torch.ones(2))
    optimizer = AcceleratedOptimizer(torch.optim.SGD([weight], lr=0.1), scaler=scaler)
    scaler.scale((weight * float("inf")).sum()).backward()
    optimizer.step()
    return optimizer, weight


def test_the_fp16_scaler_state_is_saved_and_restored(tmp_path):
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _overflow(scaler)
    assert scaler.get_scale() == 512.0
    model, optimizer, scheduler = _parts()
    path = ckpt.save_checkpoint(tmp_path, model, optimizer, scheduler, {"step": 3}, scaler)

    fresh = torch.amp.GradScaler("cpu")
    assert fresh.get_scale() == 65536.0
    assert ckpt.load_checkpoint(path, *_parts(), fresh)["step"] == 3
    assert fresh.get_scale() == 512.0

    with pytest.raises(ValueError, match=r"resume with the train\.mixed_precision"):
        ckpt.load_checkpoint(path, *_parts(), None)


def test_a_skipped_step_does_not_advance_the_schedule():
    optimizer, weight = _overflow(torch.amp.GradScaler("cpu"))
    scheduler = cosine_schedule(optimizer.optimizer, total_steps=10, warmup_steps=0, min_lr=0.0)
    assert optimizer.step_was_skipped and torch.equal(weight.detach(), torch.ones(2))
    step_scheduler(scheduler, optimizer)
    assert scheduler.last_epoch == 0

    optimizer.zero_grad()
    optimizer.scaler.scale(weight.sum()).backward()
    optimizer.step()
    assert not optimizer.step_was_skipped
    step_scheduler(scheduler, optimizer)
    assert scheduler.last_epoch == 1
