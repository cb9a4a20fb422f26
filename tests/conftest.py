import pytest
import torch

from epalm.testing import tiny_model
from epalm.testing.perceivers import sample_media


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def media_batch(model, modalities, size=2, train=False):
    """Preprocessed media for ``size`` different samples per modality."""
    return model.preprocess(
        {m: [sample_media(m, seed=i) for i in range(size)] for m in modalities}, train=train
    )


@pytest.fixture
def make_model():
    return tiny_model
