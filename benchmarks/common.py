"""What every benchmark shares: the stacks it measures, timing, the matmul peak, and reporting.

Each benchmark is a module with ``main(argv)``; it measures side by side in one process and
hands a :class:`Report` to :func:`finish`, which prints markdown tables and writes JSON.
``--quick`` swaps the real models for tiny random ones and shrinks sizes (CI runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from epalm import EPALM
from epalm.atomic import atomic_write_text
from epalm.testing import tiny_config, tiny_tokenizer
from epalm.testing.perceivers import sample_media

MODALITIES = ("image", "video", "audio")
# A typical embedded-VQA training text: "Question: what color is the shape? Answer: blue".
QUESTION, ANSWER = "what color is the shape?", "blue"


# --- arguments and reporting ----------------------------------------------------------------------
def parser(doc: str) -> argparse.ArgumentParser:
    """The options every benchmark takes; a benchmark adds its own."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny random models, small sizes (CI)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--profile", action="store_true", help="also print where the time goes")
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def add(self, *cells: Any) -> None:
        self.rows.append(list(cells))

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |"]
        lines.append("|" + "---|" * len(self.columns))
        lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)


@dataclass
class Target:
    """A performance target, with the number measured against it."""

    what: str
    measured: float
    limit: float
    unit: str
    at_most: bool = False  # the measured value must stay at or under the limit

    @property
    def met(self) -> bool:
        return self.measured <= self.limit if self.at_most else self.measured >= self.limit

    def line(self) -> str:
        sign = "<=" if self.at_most else ">="
        verdict = "met" if self.met else "MISSED"
        return (
            f"{self.what}: {_cell(self.measured)}{self.unit} "
            f"(target {sign} {_cell(self.limit)}{self.unit}) {verdict}"
        )


@dataclass
class Report:
    name: str
    tables: list[Table] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def finish(report: Report, args: argparse.Namespace) -> None:
    """Print the report's tables, notes and targets; write it as JSON if ``--json`` was given."""
    print(f"\n## {report.name} ({machine_line()})\n")
    for table in report.tables:
        print(table.markdown() + "\n")
    for note in report.notes:
        print(note)
    for target in report.targets:
        print(target.line())
    if args.json:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        payload = {
            "benchmark": report.name,
            "command": " ".join([Path(sys.executable).name, "-m", *_module_argv()]),
            "settings": settings,
            "machine": machine(),
            "results": report.results,
            "tables": [asdict(t) for t in report.tables],
            "targets": [{**asdict(t), "met": t.met} for t in report.targets],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(payload, indent=2, default=str) + "\n")


def run_step_benchmark(
    doc: str,
    name: str,
    measure: Callable[[argparse.Namespace], tuple[Table, dict[str, Any]]],
    argv: Sequence[str] | None,
    options: Callable[[argparse.ArgumentParser], Any],
) -> None:
    """The command line of a benchmark that times training steps of several variants side by
    side: ``--stack``, its own ``options``, ``--batch`` and ``--repeats``; then ``measure``'s
    table and results, reported."""
    p = parser(doc)
    p.add_argument("--stack", choices=["embedded", "paper"], default="embedded")
    options(p)
    p.add_argument("--batch", type=int, help="default 32 (quick: 4)")
    p.add_argument("--repeats", type=int, help="timed steps per variant; default 3 (quick: 1)")
    args = parse(p, argv)
    args.batch = args.batch or (4 if args.quick else 32)
    args.repeats = args.repeats or (1 if args.quick else 3)
    report = Report(name)
    table, report.results = measure(args)
    report.tables.append(table)
    finish(report, args)


def _module_argv() -> list[str]:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return [spec.name if spec else sys.argv[0], *sys.argv[1:]]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def machine() -> dict[str, Any]:
    info = {
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine_line() -> str:
    m = machine()
    where = m.get("gpu") or f"{m['processor']}, {m['cpus']} CPUs, {m['torch_threads']} threads"
    return f"{where}, torch {m['torch']}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# --- timing ---------------------------------------------------------------------------------------
def seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1, device: str = "cpu") -> float:
    """The best wall time of ``fn`` over ``repeats`` calls, after ``warmup`` untimed ones: on a
    shared machine noise only ever adds time, so the fastest run is the least disturbed."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def side_by_side(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, device: str = "cpu"
) -> dict[str, list[float]]:
    """Seconds of each ``fn`` per round, timed in alternation so that drift hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + repeats):
        for name, fn in fns.items():
            took = seconds(fn, repeats=1, warmup=0, device=device)
            if round_ >= warmup:
                times[name].append(took)
    return times


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """The median of round-by-round ratios: robust to a noisy neighbour slowing one round."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, device: str = "cpu", sizes: Sequence[int] = ()) -> float:
    """This machine's dense matmul rate (FLOP/s) in ``dtype``: the best square ``a @ b`` measured."""
    sizes = sizes or ((8192,) if device.startswith("cuda") else (1024, 2048))
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        best = max(best, 2 * n**3 / seconds(partial(torch.mm, a, b), repeats=5, device=device))
    return best


def profile_table(fn: Callable[[], Any], rows: int = 12) -> str:
    """torch.profiler's table of the operators ``fn`` spends its time in, slowest first."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


# --- what is measured -----------------------------------------------------------------------------
def default_stack(
    modality: str,
    quick: bool,
    overrides: Sequence[str] = (),
    *,
    connector: dict[str, Any] | None = None,
    perceiver: dict[str, Any] | None = None,
) -> EPALM:
    """``epalm train modality=M`` 's model, with Hydra ``overrides`` and changes to its
    ``connector`` and ``perceiver`` kwargs. Quick: a tiny random one (of the overrides, only
    ``connector=ep-alm`` applies: a soft prompt)."""
    connector, perceiver = connector or {}, perceiver or {}
    torch.manual_seed(0)
    if quick:
        prompt = 3 if "connector=ep-alm" in overrides else 0
        config = tiny_config(modalities=[modality], **{"prompt_tokens": prompt, **connector})
        config.perceivers[modality].kwargs.update(perceiver)
        return EPALM(config, tokenizer=tiny_tokenizer())
    from epalm.training.compose import settings

    changes = [f"connector.{k}={v}" for k, v in connector.items()]
    changes += [f"encoder.perceiver.kwargs.{k}={v}" for k, v in perceiver.items()]
    run, _ = settings([f"modality={modality}", *overrides, *changes])
    return EPALM(run.model_config())


def features(model: EPALM, modality: str, batch: int) -> torch.Tensor:
    """What the feature cache would hold for ``batch`` samples: the real perceiver's output."""
    with torch.no_grad():
        return model.perceivers[modality].encode([sample_media(modality, i) for i in range(batch)])


def media_inputs(model: EPALM, modality: str, batch: int) -> dict[str, dict[str, torch.Tensor]]:
    """Preprocessed perceiver inputs for ``batch`` samples (what a DataLoader would hand over)."""
    return model.preprocess({modality: [sample_media(modality, i) for i in range(batch)]})


def stack_name(model: EPALM) -> str:
    """What the model is made of, for table rows: the LM and perceiver names (tiny: random)."""
    lm = model.config.lm.model or "tiny random LM"
    parts = [
        p.kwargs.get("model") or "tiny random encoder" for p in model.config.perceivers.values()
    ]
    return " + ".join([lm, *parts])


def vqa_texts(model: EPALM, batch: int) -> dict[str, torch.Tensor]:
    return model.encode_targets([ANSWER] * batch, questions=[QUESTION] * batch)


def cached_batch(model: EPALM, modality: str, batch: int) -> dict[str, Any]:
    """A training batch as the feature cache serves it: VQA text and the perceiver's features."""
    return {**vqa_texts(model, batch), "features": {modality: features(model, modality, batch)}}


Loss = Callable[[EPALM, dict[str, Any]], torch.Tensor]


def target_loss(model: EPALM, inputs: dict[str, Any]) -> torch.Tensor:
    """epalm's loss: the LM head runs only where a target token is predicted."""
    loss, count = model.target_loss(**inputs)
    return loss / count


def training_step(
    model: EPALM, loss_of: Loss = target_loss, autocast: Any = None
) -> Callable[[dict[str, Any]], float]:
    """One step as the trainer takes it (loss, backward, AdamW on the connector), as a
    function of the batch's model inputs returning the loss."""
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.02)

    def step(inputs: dict[str, Any]) -> float:
        with autocast or nullcontext():
            loss = loss_of(model, inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def step_cost(
    model: EPALM, inputs: dict[str, Any], repeats: int, autocast: Any = None, device: str = "cpu"
) -> tuple[Callable[[], float], float, int]:
    """``(the step on inputs, its best seconds, its FLOPs)`` for one training step, the FLOPs
    counted by ``FlopCounterMode`` after a warm-up step."""
    step = partial(training_step(model, autocast=autocast), inputs)
    step()
    with FlopCounterMode(display=False) as counter:
        step()
    return step, seconds(step, repeats, warmup=0, device=device), counter.get_total_flops()
