"""Shared fixtures: small real files that the tests generate (no downloads)."""
import contextlib

import pytest
import torch

from vggfeat.models import build_backbone, save_backbone


@contextlib.contextmanager
def torch_threads(n: int = 1):
    """Run torch with n intra-op threads, then restore the count.

    The test nets are so small that OpenMP synchronisation costs more than the arithmetic
    (5-15x slower with two threads on a busy 2-core machine), and a fixed count keeps CPU
    results reproducible.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_torch_thread():
    with torch_threads(1):
        yield


TINY = {"arch": "vgg11", "width": 0.125, "crop_size": 64, "num_classes": 10}


def make_tiny_backbone(seed: int = 0, **overrides):
    """A narrow VGG (channels 8..64, fc 512, fc6 kernel 2) with non-trivial weights.

    Xavier init so activations neither vanish nor explode in a narrow net.
    """
    torch.manual_seed(seed)
    config = {**TINY, **overrides}
    arch = config.pop("arch")
    return build_backbone(arch, init="xavier", **config).eval()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """Path of a vggfeat checkpoint of a tiny net (seed 0, 10 classes)."""
    path = tmp_path_factory.mktemp("weights") / "tiny-vgg11.pth"
    save_backbone(make_tiny_backbone(), path)
    return path
