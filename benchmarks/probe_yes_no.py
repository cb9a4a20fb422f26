"""Can the frozen LM answer easy-VQA's yes/no questions when it is *told* what the image shows?

    python -m benchmarks.probe_yes_no [--lm smollm2-135m-instruct]

For every color and shape, the LM reads "The image shows a <color> <shape>. Question: is there
a <value> shape? Answer:" (and "is there a <shape>?"), once naming the image's own value and once
another, and the probe compares its " yes" and " no" logits. Chance is 50%. This bounds what a
connector can hope for on the balanced yes/no questions: it can only hand the LM what the text
here hands it directly.
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from epalm.data.embedded.easy_vqa import COLORS, SHAPES
from epalm.zoo.resolver import resolve

TEMPLATES = {
    "plain": "The image shows a {color} {shape}. Question: {question} Answer:",
    "task prompt": "A {color} {shape}. Question: {question} Answer:",
}


def questions(color: str, shape: str) -> list[tuple[str, bool]]:
    """Each asked value once as itself (yes) and once as every other value (no)."""
    asked = [(f"is there a {c} shape?", c == color) for c in COLORS]
    return asked + [(f"is there a {s}?", s == shape) for s in SHAPES]


@torch.no_grad()
def accuracy(lm, tokenizer, template: str) -> dict[str, float]:
    yes, no = (tokenizer(word).input_ids[-1] for word in (" yes", " no"))
    right = {True: [], False: []}
    for color, shape in itertools.product(COLORS, SHAPES):
        for question, truth in questions(color, shape):
            text = template.format(color=color, shape=shape, question=question)
            logits = lm(**tokenizer(text, return_tensors="pt")).logits[0, -1]
            right[truth].append(bool(logits[yes] > logits[no]) == truth)
    # Each class weighted equally, as in the balanced questions (half yes, half no).
    per_class = {k: sum(v) / len(v) for k, v in right.items()}
    return {"yes": per_class[True], "no": per_class[False], "balanced": sum(per_class.values()) / 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm", default="smollm2-135m-instruct")
    args = parser.parse_args()
    path = resolve(args.lm)
    tokenizer = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    results = {name: accuracy(lm, tokenizer, t) for name, t in TEMPLATES.items()}
    print("| context | yes questions | no questions | balanced accuracy |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['yes']:.1%} | {r['no']:.1%} | {r['balanced']:.1%} |")
    print(json.dumps({"lm": args.lm, **results}))


if __name__ == "__main__":
    main()
