"""Contrastive alignment and retrieval (LilT): the loss, the metrics and the search index."""

from epalm.retrieval.contrastive import (
    Temperature,
    contrastive_loss,
    contrastive_sum,
    gather_with_grad,
)
from epalm.retrieval.index import RetrievalIndex
from epalm.retrieval.metrics import retrieval_recalls

__all__ = [
    "RetrievalIndex",
    "Temperature",
    "contrastive_loss",
    "contrastive_sum",
    "gather_with_grad",
    "retrieval_recalls",
]
