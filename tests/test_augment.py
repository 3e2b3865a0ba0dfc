"""Training augmentation: rescale, crops, flips, AlexNet PCA colour shift, per-image seeds."""
import numpy as np
import pytest
import torch
from PIL import Image

from vggfeat.data.transforms import rescale_pil
from vggfeat.training.augment import (
    EIGVAL,
    EIGVEC,
    TrainTransform,
    ValTransform,
    apply_on_device,
    pca_shift,
    sample_generator,
    sample_seed,
)


def gradient_image(w: int, h: int) -> Image.Image:
    """Distinct pixels everywhere, so crops and flips can be located exactly."""
    x = np.arange(w)[None, :].repeat(h, 0)
    y = np.arange(h)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x % 256, y % 256, (x + 3 * y) % 256], -1).astype(np.uint8))


def test_pca_shift_matches_the_spec_by_hand():
    # alpha = e_1: the shift is lambda_1 times the first eigenvector (first column).
    shift = pca_shift(torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(shift, torch.tensor([-0.5675, -0.5808, -0.5836]) * 0.2175)
    alpha = torch.tensor([0.3, -1.0, 2.0])
    expected = sum(alpha[i] * EIGVAL[i] * EIGVEC[:, i] for i in range(3))
    torch.testing.assert_close(pca_shift(alpha), expected)


def test_eigenvectors_are_orthonormal():
    torch.testing.assert_close(EIGVEC.T @ EIGVEC, torch.eye(3), atol=2e-4, rtol=0)


@pytest.mark.parametrize("size", [(120, 80), (80, 120), (64, 64)])
def test_rescale_sets_the_smallest_side(size):
    out = rescale_pil(Image.new("RGB", size), 64)
    assert min(out.size) == 64
    assert out.size[0] / out.size[1] == pytest.approx(size[0] / size[1], rel=0.02)


def test_train_crop_is_a_window_of_the_rescaled_image_possibly_flipped():
    img = gradient_image(100, 70)  # S = 70: no rescale, the crop is an exact window
    transform = TrainTransform(70, 64, lighting_std=0.0)
    full = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    flips = set()
    for index in range(20):
        x, shift = transform(img, sample_generator(0, 0, index))
        assert x.shape == (3, 64, 64) and x.dtype == torch.uint8
        assert torch.equal(shift, torch.zeros(3))
        found = [(t, left, f) for t in range(7) for left in range(37) for f in (False, True)
                 if torch.equal(x, full[:, t:t + 64, left:left + 64].flip(-1) if f
                                else full[:, t:t + 64, left:left + 64])]
        assert len(found) == 1
        flips.add(found[0][2])
    assert flips == {False, True}


def test_scale_jitter_draws_s_in_range():
    img = Image.new("RGB", (400, 300))
    transform = TrainTransform((64, 96), 64)
    seen = set()
    for index in range(60):
        gen = sample_generator(1, 2, index)
        s = int(torch.randint(64, 97, (1,), generator=gen))  # the first draw is S
        seen.add(s)
        transform(img, sample_generator(1, 2, index))
    assert min(seen) >= 64 and max(seen) <= 96 and len(seen) > 10


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    img = gradient_image(90, 80)
    transform = TrainTransform((64, 80), 64)
    a = transform(img, sample_generator(5, 1, 7))
    b = transform(img, sample_generator(5, 1, 7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    others = [transform(img, sample_generator(*key)) for key in ((5, 2, 7), (5, 1, 8), (6, 1, 7))]
    assert all(not torch.equal(a[1], o[1]) for o in others)
    assert len({sample_seed(0, e, i) for e in range(5) for i in range(100)}) == 500


def test_val_transform_takes_the_centre_crop():
    img = gradient_image(100, 70)
    x, shift = ValTransform(70, 64)(img)
    full = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    assert torch.equal(x, full[:, 3:67, 18:82]) and torch.equal(shift, torch.zeros(3))


def test_scale_below_crop_is_refused():
    with pytest.raises(ValueError, match="crop size"):
        TrainTransform(48, 64)
    with pytest.raises(ValueError, match="crop size"):
        ValTransform(32, 64)


def test_apply_on_device_scales_and_shifts():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    shift = torch.tensor([[0.1, 0.0, -0.1], [0.0, 0.0, 0.0]])
    out = apply_on_device(x, shift)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.1, 0.2, 0.9]))
    torch.testing.assert_close(out[1, :, 1, 1], torch.tensor([0.0, 0.2, 1.0]))
