"""vggfeat.data.transforms: rescale to smallest side Q, checked against Pillow and numpy."""
import numpy as np
import pytest
import torch
from helpers_features import random_rgb, reference_resize
from PIL import Image

from vggfeat.data.transforms import multiscale, rescale, scaled_size, to_tensor


@pytest.mark.parametrize(("size", "q", "expected"), [
    ((375, 500), 256, (256, 341)),   # 500 * 256 / 375 = 341.33
    ((500, 375), 384, (512, 384)),
    ((333, 500), 256, (256, 384)),   # 384.38
    ((100, 100), 64, (64, 64)),
    ((3, 5), 64, (64, 107)),         # 106.67: upscaling works the same way
    ((2, 3), 64, (64, 96)),          # exactly half: rounds up
])
def test_scaled_size(size, q, expected):
    assert scaled_size(*size, q) == expected


def test_scaled_size_rejects_nonpositive():
    with pytest.raises(ValueError):
        scaled_size(10, 10, 0)


@pytest.mark.parametrize("q", [16, 23, 64])
def test_rescale_matches_pillow_float_bilinear(q):
    pixels = random_rgb(37, 50, seed=q)
    out = rescale(to_tensor(Image.fromarray(pixels)), q)
    h, w = scaled_size(37, 50, q)
    assert out.shape == (3, h, w)
    for c in range(3):  # Pillow's "F" resize is its own antialiased bilinear, in float32
        channel = Image.fromarray(pixels[..., c].astype(np.float32) / 255, "F")
        expected = np.asarray(channel.resize((w, h), Image.Resampling.BILINEAR))
        np.testing.assert_allclose(out[c].numpy(), expected, atol=2e-6)


def test_rescale_matches_float64_resampling_matrices():
    pixels = random_rgb(41, 29, seed=3)
    out = rescale(to_tensor(Image.fromarray(pixels)), 20)
    np.testing.assert_allclose(out.double().numpy(), reference_resize(pixels, 20), atol=1e-6)


def test_multiscale_and_identity():
    pixels = random_rgb(32, 48)
    x = to_tensor(Image.fromarray(pixels))
    assert x.dtype == torch.float32 and float(x.max()) <= 1.0
    assert rescale(x, 32) is x
    shapes = [t.shape for t in multiscale(Image.fromarray(pixels), (32, 64))]
    assert shapes == [(3, 32, 48), (3, 64, 96)]
