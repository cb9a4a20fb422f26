"""Caption metrics with pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L and CIDEr (CIDEr-D).

As the COCO caption evaluation does, candidates and references are first tokenised with the
Stanford PTB tokenizer (lower-cased, punctuation dropped). That tokenizer and METEOR run on
Java: without ``java`` on PATH, METEOR is skipped and a simple Python tokenizer stands in, so
BLEU/ROUGE-L/CIDEr may then differ slightly from official numbers; the result's ``notes`` say
so. SPICE is not computed (it downloads Stanford CoreNLP models).
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

log = logging.getLogger(__name__)

Texts = dict[str, list[str]]  # sample id -> tokenised sentences, pycocoevalcap's input shape
# Punctuation, as the COCO evaluation drops the PTB tokenizer's punctuation tokens; an
# apostrophe stays only inside a word ("dog's").
_SIMPLE_DROP = re.compile(r"[^\w\s']|_|'(?!\w)|(?<!\w)'")


def java_available() -> bool:
    return shutil.which("java") is not None


def caption_scores(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    *,
    java: bool | None = None,
) -> dict[str, Any]:
    """Corpus caption metrics of ``{id: caption}`` against ``{id: [reference, ...]}``.

    Returns ``{"metrics": {"BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}, "per_sample":
    {id: {metric: score}}, "count", "missing", "tokenizer": "ptb" | "simple", "notes"}``;
    values are pycocoevalcap's (CIDEr is not multiplied by 100). A reference id without a
    prediction is scored as an empty caption and counted in ``missing``. ``java`` forces the
    Java tools on or off (default: use them when ``java`` is on PATH).
    """
    unknown = sorted(set(predictions) - set(references))
    if unknown:
        raise ValueError(f"predictions for ids without references: {unknown[:5]}")
    if not references:
        raise ValueError("no references to score against")
    java = java_available() if java is None else java
    notes: list[str] = []
    missing = [i for i in references if i not in predictions]
    if missing:
        notes.append(f"{len(missing)} samples had no prediction and count as empty: {missing[:5]}")
    candidates = {i: [predictions.get(i, "")] for i in references}
    refs = {i: list(r) for i, r in references.items()}
    candidates, refs, tokenizer = _tokenize(candidates, refs, java, notes)

    scores: dict[str, Any] = {}  # metric -> (corpus score, per-sample scores in refs' order)
    bleu, bleu_each = Bleu(4).compute_score(refs, candidates, verbose=0)
    for n in range(4):
        scores[f"BLEU-{n + 1}"] = bleu[n], bleu_each[n]
    meteor = _meteor(refs, candidates, notes) if java else None
    if meteor is not None:
        scores["METEOR"] = meteor
    scores["ROUGE-L"] = Rouge().compute_score(refs, candidates)
    scores["CIDEr"] = Cider().compute_score(refs, candidates)
    for note in notes:
        log.warning(note)
    return {
        "metrics": {name: float(total) for name, (total, _) in scores.items()},
        "per_sample": {
            i: {name: float(each[k]) for name, (_, each) in scores.items()}
            for k, i in enumerate(refs)
        },
        "count": len(refs),
        "missing": len(missing),
        "tokenizer": tokenizer,
        "notes": notes,
    }


def simple_tokenize(text: str) -> str:
    """A Java-free stand-in for the PTB tokenizer: lower-case, punctuation out, single spaces."""
    return " ".join(_SIMPLE_DROP.sub(" ", text.lower()).split())


def _tokenize(
    candidates: Texts, refs: Texts, java: bool, notes: list[str]
) -> tuple[Texts, Texts, str]:
    if java:
        # It can fail where Java can: e.g. a read-only install (it writes a temp file there).
        try:
            return _ptb(candidates), _ptb(refs), "ptb"
        except (OSError, ValueError) as err:
            notes.append(f"PTB tokenizer failed ({err}); used the simple Python tokenizer")
    else:
        notes.append(
            "java not found: METEOR skipped and the simple Python tokenizer used instead of "
            "the PTB tokenizer (BLEU/ROUGE-L/CIDEr may differ slightly from official numbers)"
        )
    simple = {i: [simple_tokenize(t) for t in texts] for i, texts in candidates.items()}
    simple_refs = {i: [simple_tokenize(t) for t in texts] for i, texts in refs.items()}
    return simple, simple_refs, "simple"


def _ptb(texts: Texts) -> Texts:
    # One sentence per line goes to Java: any whitespace (a "\r" too) must not split a caption.
    lines = {i: [{"caption": " ".join(t.split())} for t in ts] for i, ts in texts.items()}
    tokenized = PTBTokenizer().tokenize(lines)
    if any(len(tokenized.get(i, ())) != len(ts) for i, ts in texts.items()):
        raise ValueError("PTB tokenizer output does not line up with its input")
    return tokenized


def _meteor(refs: Texts, candidates: Texts, notes: list[str]) -> tuple[float, list[float]] | None:
    try:
        meteor = _ClosingMeteor()
    except OSError as err:
        notes.append(f"METEOR skipped: could not start java ({err})")
        return None
    try:
        return meteor.compute_score(refs, candidates)
    except (OSError, ValueError) as err:  # the JVM died (memory: it asks for 2 GB) or misread
        notes.append(f"METEOR skipped: it failed ({err})")
        return None
    finally:
        meteor.close()


class _ClosingMeteor(Meteor):
    """pycocoevalcap's METEOR with a safe close: its ``__del__`` waits on a lock that a failed
    ``compute_score`` never releases, which would hang garbage collection."""

    def close(self) -> None:
        process = self.meteor_p
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            stream.close()

    def __del__(self) -> None:
        if hasattr(self, "meteor_p"):
            self.close()
