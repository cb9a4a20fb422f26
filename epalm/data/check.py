"""``epalm data check DIR``: a directory of manifests looked over before the long run.

Every line of every split is validated (all problems, not the first), samples are counted per
split, modality, task and question type, every media file is opened (missing or unreadable
ones listed), answers are tallied, the blind prior (always the training split's most common
answer for the question type) is scored, and ids or media shared across splits are flagged.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from epalm.data.manifest import Sample, read_manifest
from epalm.data.media import MediaError, check_file, decoding, read_image

LISTED = 20  # problems of one kind printed in full; the count says how many more


@dataclass
class Report:
    """What ``check`` found; ``problems`` make the directory unusable as it is, ``warnings``
    deserve a look."""

    samples: dict[str, list[Sample]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # the printed report

    @property
    def ok(self) -> bool:
        return not self.problems


def check(root: str | Path, splits: Iterable[str] | None = None) -> Report:
    """Check the manifests ``{split}.jsonl`` under ``root`` (every ``*.jsonl`` by default)."""
    root = Path(root)
    files = (
        sorted(root.glob("*.jsonl")) if splits is None else [root / f"{s}.jsonl" for s in splits]
    )
    report = Report()
    if not files:
        report.problems.append(f"{root}: no manifests (*.jsonl) here")
    for path in files:
        report.samples[path.stem] = _read(path, report.problems)
    _count(report)
    _check_media(report)
    _answers(report)
    _leaks(report)
    return report


def _read(path: Path, problems: list[str]) -> list[Sample]:
    """Every valid sample of a manifest; each bad line is a problem naming file and line."""
    if not path.is_file():
        problems.append(f"{path}: not found")
        return []
    return read_manifest(path, problems)


def _count(report: Report) -> None:
    report.lines.append("samples per split (modality / task / question type):")
    for split, samples in report.samples.items():
        kinds = Counter((s.modality, s.task) for s in samples)
        types = Counter(s.extra["question_type"] for s in samples if "question_type" in s.extra)
        parts = [f"{n} {modality} {task}" for (modality, task), n in sorted(kinds.items())]
        typed = f"; types: {_tally(types)}" if types else ""
        report.lines.append(f"  {split}: {len(samples)} ({', '.join(parts) or 'none'}){typed}")


def _check_media(report: Report) -> None:
    media = {p: s.modality for ss in report.samples.values() for s in ss for p in s.media_paths}
    bad = []
    for path, modality in tqdm(media.items(), desc="opening media", unit="file", leave=False):
        try:
            _open(path, modality)
        except MediaError as err:
            bad.append(str(err))
    report.lines.append(f"media: {len(media)} files, {len(bad)} missing or unreadable")
    if bad:
        report.problems.append(f"{len(bad)} of {len(media)} media files are missing or unreadable")
        report.problems.extend(_capped(bad))


def _open(path: Path, modality: str) -> None:
    """Decode an image; for video and audio, read the header and find the stream."""
    if modality == "image":
        read_image(path)
        return
    import av

    path = check_file(path)
    with decoding(path, modality), av.open(str(path)) as container:
        streams = container.streams.video if modality == "video" else container.streams.audio
        if not streams:
            raise MediaError(f"{path}: no {modality} stream")


def _answers(report: Report) -> None:
    """Answer tallies per question type, and the blind prior's VQA accuracy per split."""
    from epalm.tasks.vqa import majority_answer, vqa_accuracy

    questions = {k: [s for s in v if s.task == "vqa"] for k, v in report.samples.items()}
    if not any(questions.values()):
        return
    reference = questions.get("train") or next(v for v in questions.values() if v)
    by_type: dict[str, Counter] = defaultdict(Counter)
    for s in reference:
        by_type[s.extra.get("question_type", "all")][majority_answer(s.answers)] += 1
    prior = {kind: counts.most_common(1)[0][0] for kind, counts in by_type.items()}
    report.lines.append("answers (most common first, of the training split where there is one):")
    for kind, counts in sorted(by_type.items()):
        report.lines.append(f"  {kind}: {len(counts)} distinct; {_tally(counts, 5)}")
    report.lines.append("blind prior (the type's most common answer, always), VQA accuracy:")
    for split, samples in questions.items():
        if samples:
            scores = [vqa_accuracy(prior.get(_kind(s), ""), s.answers, "2021") for s in samples]
            report.lines.append(f"  {split}: {100 * sum(scores) / len(scores):.1f}")


def _kind(sample: Sample) -> str:
    return sample.extra.get("question_type", "all")


def _leaks(report: Report) -> None:
    """Ids or media files that appear in more than one split."""
    for what, keys in (("ids", lambda s: [s.id]), ("media files", lambda s: s.media_paths)):
        where: dict[object, set[str]] = defaultdict(set)
        for split, samples in report.samples.items():
            for s in samples:
                for key in keys(s):
                    where[key].add(split)
        shared = [f"{key} ({', '.join(sorted(splits))})" for key, splits in where.items()
                  if len(splits) > 1]  # fmt: skip
        if shared:
            report.warnings.append(f"{len(shared)} {what} are in more than one split (leakage)")
            report.warnings.extend(_capped(shared))


def _tally(counts: Counter, most: int = 8) -> str:
    return ", ".join(f"{key} {n}" for key, n in counts.most_common(most))


def _capped(items: list[str]) -> list[str]:
    shown = [f"  {item}" for item in items[:LISTED]]
    if len(items) > LISTED:
        shown.append(f"  ... and {len(items) - LISTED} more")
    return shown
