"""The training loop, on accelerate: one process or many (DDP; FSDP and DeepSpeed are refused),
mixed precision, gradient accumulation, checkpoints that resume bit-identically, validation
during training and the test-split report at the end."""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from epalm.objectives import objective_for
from epalm.tasks.collate import TaskCollator, is_empty, model_inputs, to_device
from epalm.training import checkpoint as ckpt
from epalm.training import faithful
from epalm.training.data import TaskItems, TaskSampler, batches, task_mix
from epalm.training.evaluate import selection_score
from epalm.training.optim import Schedule, build_optimization, check_recipe
from epalm.training.settings import RunSettings, SettingsError
from epalm.training.task_data import TaskData, load_task_data

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; names the step and the batch's sample ids."""


class Trainer:
    """``Trainer(settings, accelerator).fit()`` trains, checkpoints, evaluates and returns the
    final model's directory (``<run_dir>/final``)."""

    def __init__(self, settings: RunSettings, accelerator: Any) -> None:
        _check_strategy(accelerator)
        self.s, self.acc = settings, accelerator
        self.run_dir = Path(settings.run_dir)
        set_seed(settings.seed)  # the connector's initialisation, identical on every process
        check_recipe(settings.train.optimizer)
        if settings.faithful:
            log.info(faithful.summary(settings))
        self.objective = objective_for(settings)
        self.model = self.objective.build_model(settings)
        self.model.to(accelerator.device)
        report = self.model.parameter_report()
        log.info(
            "trainable parameters: %s of %s (%.3f%%)",
            f"{report.trainable:,}",
            f"{report.total:,}",
            100 * report.share,
        )
        log.info("parameters by part:\n%s", report)
        if description := self.objective.describe(self.model):
            log.info("%s", description)

    # --- data ------------------------------------------------------------------------------
    def _datasets(self) -> None:
        """Every task's splits and perception: the run's own job, or a multi-task run's jobs."""
        multitask = bool(self.s.jobs)
        self.tasks: list[TaskData] = [
            load_task_data(
                name,
                run,
                self.model,
                self.acc,
                multitask=multitask,
                objective=self.objective,
            )
            for name, run in self.s.task_runs().items()
        ]

    def _train_loader(self, total: int, start_step: int) -> Any:
        """Batches of one task each, from ``start_step`` on (``TaskSampler``)."""
        s, acc = self.s, self.acc
        datasets = {t.name: t.dataset(t.train, train=True) for t in self.tasks}
        sizes = [len(d) for d in datasets.values()]
        weights = task_mix([t.name for t in self.tasks], sizes, s.multitask)
        if len(self.tasks) > 1:
            temperature = f"multitask.temperature={s.multitask.temperature}"
            log.info(
                "tasks and their share of the steps (%s): %s",
                "multitask.weights" if s.multitask.weights else temperature,
                ", ".join(f"{t.name} {100 * w:.1f}%" for t, w in zip(self.tasks, weights)),
            )
        sampler = TaskSampler(
            sizes,
            weights,
            batch_size=s.train.batch_size,
            steps=total,
            seed=s.seed,
            start_step=start_step,
            grad_accum=s.train.grad_accum,
            rank=acc.process_index,
            world_size=acc.num_processes,
        )
        collate = TaskCollator({t.name: self.objective.collator(self.model, t) for t in self.tasks})
        workers = max(t.num_workers for t in self.tasks)
        return batches(TaskItems(datasets, s.seed), collate, sampler=sampler, num_workers=workers)

    # --- the loop --------------------------------------------------------------------------
    def fit(self) -> Path:
        s, acc = self.s, self.acc
        self._datasets()
        samples = sum(len(t.train) for t in self.tasks)
        total = s.train.max_steps or math.ceil(s.train.epochs * samples / s.train.batch_size)
        per_epoch = math.ceil(samples / s.train.batch_size)
        optimizer, scheduler = build_optimization(
            self.model, s.train, Schedule(total_steps=total, steps_per_epoch=per_epoch)
        )
        state = {"step": 0, "best": None, "best_step": None, "history": []}
        latest = ckpt.latest_checkpoint(self.run_dir) if s.resume == "auto" else None
        if latest is not None:
            state = ckpt.load_checkpoint(latest, self.model, optimizer, scheduler, acc.scaler)
            log.info("resumed from %s (step %d of %d)", latest, state["step"], total)
        wrapped, optimizer = acc.prepare(self.objective.loss_module(self.model), optimizer)
        acc.init_trackers("tensorboard")
        loader = self._train_loader(total, state["step"])
        log.info(
            "training %d steps (%d done) of %d samples (%d per process x %d accumulation x %d "
            "processes), precision %s",
            total,
            state["step"],
            s.train.batch_size,
            loader.batch_sampler.micro,
            s.train.grad_accum,
            acc.num_processes,
            acc.mixed_precision,
        )
        self._loop(wrapped, optimizer, scheduler, loader, state, total)
        return self._finish(state)

    def _loop(self, wrapped, optimizer, scheduler, loader, state, total) -> None:
        s, acc = self.s, self.acc
        bar = tqdm(
            total=total,
            initial=state["step"],
            desc="training",
            unit="step",
            disable=not acc.is_main_process,
            dynamic_ncols=True,
        )
        micro_batches, losses, started = iter(loader), [], time.perf_counter()
        stepping, first = 0.0, state["step"]  # seconds in training steps alone
        self.model.train()
        while state["step"] < total:
            step = state["step"]
            began = time.perf_counter()
            loss = self._step(wrapped, optimizer, micro_batches, step)
            step_scheduler(scheduler, optimizer)
            stepping += time.perf_counter() - began
            state["step"] = step + 1
            losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if state["step"] % s.train.log_every == 0 or state["step"] == total:
                elapsed = time.perf_counter() - started
                self._log_train(state["step"], losses, scheduler, elapsed)
                state["history"].append({"step": state["step"], "loss": sum(losses) / len(losses)})
                losses, started = [], time.perf_counter()
            if any(t.val for t in self.tasks) and (
                state["step"] % s.train.eval_every == 0 or state["step"] == total
            ):
                self._validate(state)
                started = time.perf_counter()  # samples/s counts training steps only
            if state["step"] % s.train.save_every == 0 or state["step"] == total:
                self._save(optimizer, scheduler, state)
                started = time.perf_counter()
        bar.close()
        if state["step"] > first:
            done = state["step"] - first
            log.info(
                "trained %d steps in %.0f s: %.3f s/step (validation and checkpoints excluded)",
                done,
                stepping,
                stepping / done,
            )

    def _step(self, wrapped, optimizer, micro_batches, step: int) -> float:
        """One optimizer step over ``grad_accum`` micro-batches per process. The loss is the mean
        over everything the objective counts in the global batch (target tokens: HF's
        ``num_items_in_batch``; pairs), so any split over processes and accumulation gives the
        single-process gradient."""
        s, acc = self.s, self.acc
        parts = self._drop_empty([next(micro_batches) for _ in range(s.train.grad_accum)], step)
        tokens = self._sum_over_processes(sum(self.objective.count(self.model, b) for b in parts))
        total = 0.0
        for i, batch in enumerate(parts):
            sync = i == len(parts) - 1
            with nullcontext() if sync else acc.no_sync(wrapped), acc.autocast():
                inputs = to_device(model_inputs(batch), acc.device)
                summed, _ = wrapped(task=batch["task"], **inputs)
                self._check_finite(summed, step, batch["ids"])
                acc.backward(summed * acc.num_processes / max(tokens, 1))
            total += summed.item()
        if s.train.max_grad_norm:
            acc.clip_grad_norm_(self.model.parameters(), s.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return self._sum_over_processes(total) / max(tokens, 1)

    def _drop_empty(self, parts: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
        """The micro-batches every process keeps: one whose samples were all bad on any process
        is skipped on all of them, so that every process makes the same collective calls (a
        process that skipped alone would leave the others waiting in DDP's all-reduce)."""
        acc = self.acc
        empty = torch.tensor([float(is_empty(b)) for b in parts], device=acc.device)
        if acc.num_processes > 1:
            empty = acc.gather(empty).view(acc.num_processes, -1).amax(0)
        kept = []
        for i, (batch, skip) in enumerate(zip(parts, empty.tolist())):
            if not skip:
                kept.append(batch)
            elif is_empty(batch):
                log.warning("step %d: every sample of micro-batch %d was bad; skipped", step, i)
            else:
                log.warning(
                    "step %d: micro-batch %d skipped here too: every sample of it was bad on "
                    "another process",
                    step,
                    i,
                )
        return kept

    def _check_finite(self, loss: torch.Tensor, step: int, ids: list[str]) -> None:
        bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=self.acc.device)
        if self.acc.gather(bad).sum() > 0:
            where = f"ids {ids}" if not torch.isfinite(loss) else "another process's batch"
            raise NonFiniteLossError(
                f"step {step}: the loss is {loss.item()} ({where}); nothing was written for this "
                "step, the last checkpoint is intact. Lower train.lr / train.prompt_lr, or set "
                "train.mixed_precision=no"
            )

    def _sum_over_processes(self, value: float) -> float:
        if self.acc.num_processes == 1:
            return float(value)
        return self.acc.reduce(torch.tensor([float(value)], device=self.acc.device), "sum").item()

    def _log_train(self, step: int, losses: list[float], scheduler, elapsed: float) -> None:
        rate = len(losses) * self.s.train.batch_size / max(elapsed, 1e-9)
        loss = sum(losses) / len(losses)
        lrs = scheduler.get_last_lr()
        log.info("step %d  loss %.4f  lr %.2e  %.1f samples/s", step, loss, lrs[0], rate)
        self.acc.log({"train/loss": loss, "train/lr": lrs[0], "train/samples_per_s": rate}, step)

    # --- validation, checkpoints, the end ----------------------------------------------------
    def _validate(self, state: dict[str, Any]) -> None:
        acc = self.acc
        if acc.is_main_process:
            values = {t.name: self._validate_task(t, state["step"]) for t in self.tasks if t.val}
            metric, value = selection_score(values)
            if len(values) > 1:
                log.info("step %d  val %s %.4f", state["step"], metric, value)
            if state["history"]:
                state["history"][-1]["val"] = value
                if len(values) > 1:
                    state["history"][-1]["val_tasks"] = {n: v for n, (_, v) in values.items()}
            if state["best"] is None or value > state["best"]:
                state["best"], state["best_step"] = value, state["step"]
                ckpt.publish_model(self.model, self.run_dir / "best")
                log.info("new best val %s %.4f: saved %s", metric, value, "best/")
        acc.wait_for_everyone()
        state["best"], state["best_step"] = _broadcast(acc, [state["best"], state["best_step"]])
        self.model.train()

    def _validate_task(self, task: TaskData, step: int) -> tuple[str, float]:
        """``(metric, value)`` of one task on its validation subset, logged."""
        run, label = task.run, f"{task.name} " if task.model_task else ""
        metrics = self.objective.validate(self.model, task)
        log.info("step %d  val %s%s %.4f", step, label, run.task.metric, metrics[run.task.metric])
        prefix = f"val/{task.name}/" if task.model_task else "val/"
        self.acc.log({f"{prefix}{k}": v for k, v in metrics.items()}, step)
        return run.task.metric, metrics[run.task.metric]

    def _save(self, optimizer, scheduler, state: dict[str, Any]) -> None:
        acc = self.acc
        if acc.is_main_process:
            path = ckpt.save_checkpoint(
                self.run_dir, self.model, optimizer, scheduler, state, acc.scaler
            )
            pruned = ckpt.prune_checkpoints(self.run_dir, self.s.train.keep_last)
            log.info("saved %s%s", path.name, f" (removed {len(pruned)} older)" if pruned else "")
        acc.wait_for_everyone()

    def _finish(self, state: dict[str, Any]) -> Path:
        acc = self.acc
        final = self.run_dir / "final"
        if acc.is_main_process:
            ckpt.publish_model(self.model, final)
            log.info("saved the trained model: %s", final)
            rows = self.objective.evaluate(
                self.model, self.tasks, self.run_dir / "eval", checkpoint=final
            )
            for name, row in rows.items():
                prefix = f"{name}/" if len(rows) > 1 else ""
                numbers = {m: row[m] for m in ("seen", "blind") if m in row}
                acc.log(
                    {f"{prefix}{row['split']}/{m}": v for m, v in numbers.items()}, state["step"]
                )
        acc.wait_for_everyone()
        acc.end_training()
        return final


def step_scheduler(scheduler: Any, optimizer: Any) -> None:
    """Advance the learning-rate schedule, unless fp16's scaler skipped the optimizer step (its
    gradients overflowed): the schedule follows the updates that happened."""
    if getattr(optimizer, "step_was_skipped", False):
        log.info("the optimizer step was skipped (fp16 overflow); the schedule waits")
        return
    scheduler.step()


def _check_strategy(accelerator: Any) -> None:
    """Refuse the sharded strategies: validation, checkpoints and ``save_pretrained`` read the
    trained parameters on rank 0, which FSDP and DeepSpeed would shard, and neither is tested."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise SettingsError(
            f"accelerate is configured for {kind.value}, which epalm does not support yet (the "
            "trained connector is a few MB: it needs no sharding); use one process or DDP "
            "(`accelerate launch --multi_gpu`)"
        )


def _broadcast(acc: Any, values: list[Any]) -> list[Any]:
    if acc.num_processes == 1:
        return values
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list(values)
