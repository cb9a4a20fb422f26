"""Peak resident memory of training and of serving the default stack, each in its own process.

    python -m benchmarks.memory [--steps 20]

Training: ``epalm train`` (the default stack: SmolLM2-135M and DINOv2-S, image VQA from the
feature cache, batch 32) for ``--steps`` steps, then its evaluation on a few test samples.
Serving: ``epalm demo`` serving the checkpoint that run wrote, after answering a question
through the real HTTP API. The peak is the largest process's (the job or one of its DataLoader
workers), as the kernel reports it when the process ends (``wait4``'s ``ru_maxrss``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import Report, Table, Target, finish, parse, parser
from epalm.testing.perceivers import sample_media

READY = "epalm demo: serving "
QUICK = [  # a tiny random stack, as the tests train it
    "lm=tiny-llama",
    "encoder=tiny-image",
    "data.size=tiny",
    "connector.levels=2",
    "injection.first_layer=1",
    "injection.last_layer=3",
    "train.batch_size=4",
    "train.num_workers=0",
]


def peak_gb(process: subprocess.Popen) -> tuple[int, float]:
    """Wait for ``process``; its exit code and peak resident memory (GB) with its children's."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss / 2**20  # Linux reports kB


def epalm(*arguments: str, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        command = [sys.executable, "-m", "epalm", *arguments]
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


def train(run_dir: Path, common: list[str], steps: int) -> float:
    log = run_dir.parent / "train.log"
    job = epalm(
        "train",
        f"run_dir={run_dir}",
        f"train.max_steps={steps}",
        f"train.eval_every={steps}",
        f"train.save_every={steps}",
        "train.val_samples=16",
        "eval.max_samples=32",
        "eval.blind=false",
        *common,
        log=log,
    )
    code, peak = peak_gb(job)
    if code:
        raise RuntimeError(f"epalm train failed ({code}):\n{log.read_text()[-3000:]}")
    return peak


def serve(checkpoint: Path, common: list[str], scratch: Path) -> tuple[float, str]:
    """Peak memory of ``epalm demo`` after one image question, and its answer."""
    from gradio_client import Client, handle_file
    from PIL import Image

    log = scratch / "demo.log"
    server = epalm("demo", f"checkpoint={checkpoint}", "demo.examples=false", *common, log=log)
    try:
        url = wait_for_url(server, log)
        image = scratch / "shape.png"
        Image.fromarray(sample_media("image")).save(image)
        client = Client(url, verbose=False)
        answer, _ = client.predict(
            checkpoint.parent.name, handle_file(str(image)), "Ask a question",
            "what color is the shape?", "beam search", 3, 30, api_name="/image",
        )  # fmt: skip
    finally:
        server.terminate()  # SIGTERM: SIGINT is ignored where the suite runs in the background
    _, peak = peak_gb(server)
    return peak, answer


def wait_for_url(server: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while not (ready := [x for x in log.read_text().splitlines() if x.startswith(READY)]):
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"epalm demo did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return ready[0].rsplit(" on ", 1)[1].strip()


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, help="training steps; default 20 (quick: 2)")
    args = parse(p, argv)
    args.steps = args.steps or (2 if args.quick else 20)

    with tempfile.TemporaryDirectory(prefix="epalm-bench-") as scratch:
        scratch = Path(scratch)
        common = [*QUICK, f"model_cache={scratch / 'cache'}"] if args.quick else []
        run_dir = scratch / "image-vqa"
        training = train(run_dir, common, args.steps)
        serving, answer = serve(run_dir / "final", common, scratch)

    results: dict[str, Any] = {
        "train_peak_gb": training,
        "serve_peak_gb": serving,
        "answer": answer,
        "steps": args.steps,
    }
    stack = "tiny random stack" if args.quick else "SmolLM2-135M + DINOv2-S"
    table = Table(
        f"Peak resident memory ({stack}, image VQA)",
        ["process", "peak RSS (GB)"],
        [
            [f"epalm train, {args.steps} steps + evaluation", training],
            ["epalm demo, after answering one question", serving],
        ],
    )
    report = Report("Memory", [table], results)
    report.notes.append(f"the served model answered {answer!r}")
    if not args.quick:
        report.targets.append(Target("training peak RSS", training, 4, " GB", at_most=True))
    finish(report, args)


if __name__ == "__main__":
    main()
