"""Shared fixtures: small real files that the tests generate (no downloads)."""
import pytest
import torch

from vggfeat.models import build_backbone, save_backbone
from vggfeat.utils.threads import torch_threads


@pytest.fixture
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_torch_thread_per_module():
    """One torch thread for a whole module's tests: their timings and numbers do not depend
    on the machine's core count (`pytestmark = pytest.mark.usefixtures(...)`)."""
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


@pytest.fixture(scope="module")
def tiny(tiny_weights):
    """The tiny net of `tiny_weights`, loaded once per test module."""
    from vggfeat.models import load_backbone

    return load_backbone(tiny_weights)
