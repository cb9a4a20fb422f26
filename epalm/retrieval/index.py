"""A search index over a gallery's embeddings: exact for small galleries, FAISS for large ones.

Built once from a trained model and saved beside its checkpoint: the embeddings
(safetensors), each row's key (a media path or a caption; JSON) and, for the FAISS kinds,
FAISS's own index file (its binary format, not a pickle), so a large graph is not rebuilt at
each start. Every file is written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from epalm.atomic import atomic_write, atomic_write_text

#: ``auto`` picks by gallery size: exact (one matrix product) up to ``EXACT_UP_TO`` rows, FAISS's
#: flat inner-product index (still exact, SIMD and multi-threaded) up to ``FLAT_UP_TO``, then an
#: HNSW graph (approximate, sub-linear).
KINDS = ("auto", "exact", "faiss-flat", "faiss-hnsw")
EXACT_UP_TO, FLAT_UP_TO = 20_000, 1_000_000
FAISS_FILE = "faiss.index"


@dataclass
class SearchHits:
    scores: torch.Tensor  # [queries, k] cosine similarities, best first
    indices: torch.Tensor  # [queries, k] gallery rows
    keys: list[list[str]]  # the rows' keys


class RetrievalIndex:
    """Cosine search over L2-normalised embeddings, each row named by a key."""

    def __init__(self, embeddings: torch.Tensor, keys: list[str], kind: str = "auto"):
        if embeddings.ndim != 2 or embeddings.shape[0] != len(keys):
            raise ValueError(
                f"index: {tuple(embeddings.shape)} embeddings for {len(keys)} keys; "
                "want [keys, dim]"
            )
        if kind not in KINDS:
            raise ValueError(f"index kind {kind!r}: choose one of {', '.join(KINDS)}")
        self.embeddings = F.normalize(embeddings.float(), dim=-1).contiguous()
        self.keys = list(keys)
        self.kind = _pick(kind, len(keys))
        self._faiss = _faiss_index(self.embeddings, self.kind) if self.kind != "exact" else None

    def __len__(self) -> int:
        return len(self.keys)

    def search(self, queries: torch.Tensor, k: int = 10) -> SearchHits:
        """The ``k`` rows most similar to each query (``[queries, dim]`` or ``[dim]``)."""
        queries = F.normalize(queries.float().reshape(-1, self.embeddings.shape[1]), dim=-1)
        k = min(k, len(self))
        if self._faiss is None:
            scores, indices = (queries @ self.embeddings.T).topk(k, dim=1)
        else:
            found = self._faiss.search(queries.contiguous().numpy(), k)
            scores, indices = (torch.from_numpy(a) for a in found)
        keys = [[self.keys[i] for i in row] for row in indices.tolist()]
        return SearchHits(scores, indices, keys)

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(
            directory / "embeddings.safetensors",
            lambda tmp: save_file({"embeddings": self.embeddings}, tmp),
        )
        if self._faiss is not None:
            import faiss

            atomic_write(directory / FAISS_FILE, lambda tmp: faiss.write_index(self._faiss, tmp))
        meta = {"kind": self.kind, "keys": self.keys}  # last: its presence means complete
        atomic_write_text(directory / "index.json", json.dumps(meta, ensure_ascii=False))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> RetrievalIndex:
        """The index saved in ``directory`` by ``save``."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / "index.json").read_text())
            embeddings = load_file(directory / "embeddings.safetensors")["embeddings"]
            keys, kind = meta["keys"], meta["kind"]
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{directory}: not a saved retrieval index ({err})") from err
        index = cls.__new__(cls)
        index.embeddings, index.keys, index.kind, index._faiss = embeddings, keys, kind, None
        if kind != "exact":
            import faiss

            index._faiss = faiss.read_index(str(directory / FAISS_FILE))
            if index._faiss.ntotal != len(keys) or index._faiss.d != embeddings.shape[1]:
                raise ValueError(
                    f"{directory / FAISS_FILE}: {index._faiss.ntotal} rows of width "
                    f"{index._faiss.d}, but the index has {len(keys)} keys of width "
                    f"{embeddings.shape[1]}"
                )
        if embeddings.shape[0] != len(keys):
            raise ValueError(f"{directory}: {embeddings.shape[0]} embeddings, {len(keys)} keys")
        return index


def _pick(kind: str, rows: int) -> str:
    if kind != "auto":
        return kind
    return "exact" if rows <= EXACT_UP_TO else "faiss-flat" if rows <= FLAT_UP_TO else "faiss-hnsw"


def _faiss_index(embeddings: torch.Tensor, kind: str):
    import faiss

    dim = embeddings.shape[1]
    if kind == "faiss-flat":
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction, index.hnsw.efSearch = 80, 128
    index.add(embeddings.numpy())
    return index
