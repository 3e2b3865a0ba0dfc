"""vggfeat.features.descriptor: the descriptor equals an independent float64 computation."""
import numpy as np
import pytest
import torch
from helpers_features import random_rgb, reference_descriptor, write_png

from vggfeat.features.descriptor import DescriptorConfig, check_scales, config_key, describe
from vggfeat.features.engine import Engine

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")



@pytest.mark.parametrize(("layer", "flip", "fast_cpu"), [
    ("fc7", True, True), ("fc7", True, False), ("fc6", False, True), ("pool5", True, True)])
def test_one_image_equals_float64_reference(tiny, tmp_path, layer, flip, fast_cpu):
    pixels = random_rgb(70, 93, seed=1)  # not a multiple of 32; upscaled at Q=96
    path = write_png(tmp_path / "a.png", pixels)
    scales = (64, 96)
    config = DescriptorConfig.from_model(tiny, scales, layer=layer, flip=flip)
    (result,) = Engine(tiny, config, device="cpu", fast_cpu=fast_cpu).run([(0, path)])
    expected = reference_descriptor(tiny, pixels, scales, layer=layer, flip=flip)
    assert result.descriptor.shape == (2, tiny.feature_dim(layer))
    assert result.descriptor.dtype == np.float32
    assert np.abs(expected).max() > 1e-3  # the net is not dead
    np.testing.assert_allclose(result.descriptor, expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())


def test_flip_matters_and_is_symmetric(tiny):
    config = DescriptorConfig.from_model(tiny, (64,))
    x = torch.rand(1, 3, 64, 90)
    with torch.inference_mode():
        both = describe(tiny, x, config)
        mirrored = describe(tiny, x.flip(-1), config)
        no_flip = describe(tiny, x, DescriptorConfig.from_model(tiny, (64,), flip=False))
    torch.testing.assert_close(both, mirrored, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(both, no_flip, rtol=1e-3)


def test_preprocessing_comes_from_the_weights(tiny):
    caffe = {"mean": [103.939, 116.779, 123.68], "std": [1.0, 1.0, 1.0],
             "channel_order": "BGR", "value_scale": 255.0}
    default = DescriptorConfig.from_model(tiny, (64,))
    other = DescriptorConfig(**{**default.__dict__, "preprocessing": caffe})
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert not torch.allclose(describe(tiny, x, default), describe(tiny, x, other))
    assert config_key(default.as_dict()) != config_key(other.as_dict())


def test_config_key_is_stable_and_sensitive(tiny):
    a = DescriptorConfig.from_model(tiny, (64, 96))
    assert config_key(a.as_dict()) == config_key(DescriptorConfig.from_model(tiny, [64, 96])
                                                 .as_dict())
    for change in ({"layer": "fc6"}, {"flip": False}, {"scales": (64,)},
                   {"precision": "bf16"}, {"weights_sha256": "0" * 64}, {"pool": "max"},
                   {"extra_layers": ("fc6",)}):
        b = DescriptorConfig(**{**a.__dict__, **change})
        assert config_key(b.as_dict()) != config_key(a.as_dict()), change


def test_invalid_configs_are_refused(tiny):
    with pytest.raises(ValueError, match="crop size 64"):
        check_scales((32, 64), 64)
    with pytest.raises(ValueError, match="'conv9_9' is not a layer .* conv1_1, .*, fc8"):
        DescriptorConfig.from_model(tiny, (64,), layer="conv9_9")
    with pytest.raises(ValueError, match="distinct"):
        DescriptorConfig.from_model(tiny, (64, 64))
    with pytest.raises(ValueError, match="precision"):
        DescriptorConfig.from_model(tiny, (64,), precision="fp16")
