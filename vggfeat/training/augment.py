"""Training and validation transforms of the paper's recipe (paper Sec. 3.1).

Every random choice for one image is drawn from a generator seeded by
(seed, epoch, dataset index) (see `sample_generator`), never from a worker's or a rank's
global RNG state. So an epoch's augmentation does not depend on the number of
DataLoader workers or processes, and a resumed run needs no iterator state.

The transforms return uint8 crops plus a per-image RGB shift (the PCA colour
augmentation): conversion to float, the shift and the mean/std normalisation happen
on the device, on the whole batch, which keeps the host-to-device copy four times
smaller and the worker processes cheap.
"""
import numpy as np
import torch
from PIL import Image

from vggfeat.data.transforms import rescale_pil, to_uint8_tensor

# AlexNet's PCA colour augmentation: eigen decomposition of the ImageNet RGB pixel
# covariance (RGB in [0, 1]), as in fb.resnet.torch (the paper's Sec. 3.1 follows AlexNet's
# augmentation). Eigenvectors are the columns of EIGVEC, written below as matrix rows.
EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
EIGVEC = torch.tensor(
    [
        [-0.5675, 0.7192, 0.4009],
        [-0.5808, -0.0045, -0.8140],
        [-0.5836, -0.6948, 0.4203],
    ]
)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one image of one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)[0] >> 1)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator that decides every random augmentation of one image in one epoch."""
    return torch.Generator().manual_seed(sample_seed(seed, epoch, index))


def pca_shift(alpha: torch.Tensor) -> torch.Tensor:
    """The RGB offset sum_i p_i * alpha_i * lambda_i for per-image weights alpha (3,)."""
    return EIGVEC @ (alpha * EIGVAL)


class TrainTransform:
    """Rescale to S (fixed or jittered), random crop, random flip, PCA colour shift.

    Args:
        scale: training scale S (int) or a (S_min, S_max) range for scale jittering,
            S drawn uniformly per image.
        crop_size: side of the square random crop.
        flip: random horizontal flips with probability 0.5.
        lighting_std: standard deviation of the PCA weights alpha (0.1 in AlexNet);
            0 disables the colour shift.
    """

    def __init__(self, scale, crop_size: int, flip: bool = True, lighting_std: float = 0.1):
        lo, hi = (scale, scale) if isinstance(scale, int) else tuple(scale)
        if lo > hi or lo < crop_size:
            raise ValueError(
                f"training scale {scale} must be >= crop size {crop_size} (and min <= max)"
            )
        self.scale_range = (int(lo), int(hi))
        self.crop_size = crop_size
        self.flip = flip
        self.lighting_std = lighting_std
        # JPEGs may be decoded at reduced size as long as the smallest side stays >= S_max.
        self.draft_size = self.scale_range[1]

    def __call__(self, img: Image.Image, gen: torch.Generator):
        """Returns (uint8 crop (3, crop, crop), float RGB shift (3,))."""
        lo, hi = self.scale_range
        # The draws always happen in the same order so that each image's augmentation is
        # a pure function of its generator.
        s = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        img = rescale_pil(img, s)
        w, h = img.size
        c = self.crop_size
        top = int(torch.randint(0, h - c + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - c + 1, (1,), generator=gen))
        flip = bool(torch.rand(1, generator=gen) < 0.5)
        alpha = torch.randn(3, generator=gen) * self.lighting_std
        x = to_uint8_tensor(img.crop((left, top, left + c, top + c)))
        if self.flip and flip:
            x = x.flip(-1)
        return x, pca_shift(alpha)


class ValTransform:
    """Rescale to Q and take the central crop (single-crop validation during training)."""

    def __init__(self, scale: int, crop_size: int):
        if scale < crop_size:
            raise ValueError(f"validation scale {scale} must be >= crop size {crop_size}")
        self.scale = scale
        self.crop_size = crop_size
        self.draft_size = scale

    def __call__(self, img: Image.Image, gen=None):
        img = rescale_pil(img, self.scale)
        w, h = img.size
        c = self.crop_size
        top, left = (h - c) // 2, (w - c) // 2
        return to_uint8_tensor(img.crop((left, top, left + c, top + c))), torch.zeros(3)


def apply_on_device(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """uint8 batch (N, 3, H, W) and RGB shifts (N, 3) -> float RGB in [0, 1] plus shift.

    The shifted values may leave [0, 1] slightly, as in AlexNet (no clamping).
    """
    return x.float().div_(255).add_(shift.to(x.device, torch.float32)[:, :, None, None])


# -- input normalisation of a training run ---------------------------------------------

PREPROCESSINGS = ("paper", "torchvision")
# "paper": RGB in 0..255 minus a mean RGB, no division (the paper; Caffe's mean pixel, RGB).
# "torchvision": RGB in [0, 1], ImageNet mean and std (torchvision's weights).
IMAGENET_MEAN = {"paper": [123.68, 116.779, 103.939], "torchvision": [0.485, 0.456, 0.406]}
DEFAULT_STD = {"paper": [1.0, 1.0, 1.0], "torchvision": [0.229, 0.224, 0.225]}
VALUE_SCALE = {"paper": 255.0, "torchvision": 1.0}


def sample_mean_rgb(dataset, n: int, seed: int = 0, workers: int = 0) -> list[float]:
    """Mean RGB in [0, 1] of up to `n` training images (each weighted equally).

    The images are the dataset's epoch-0 training crops of a seeded sample, so every
    process of a run computes the same numbers without communicating; unreadable images
    are skipped.
    """
    from torch.utils.data import DataLoader

    count = min(n, len(dataset))
    rng = np.random.default_rng([seed, 0x3EA2])
    keys = [(0, int(i)) for i in np.sort(rng.choice(len(dataset), count, replace=False))]
    loader = DataLoader(dataset, batch_size=None, sampler=keys, num_workers=workers)
    total, seen = np.zeros(3), 0
    for image, *_ in loader:
        if image is not None:
            total += image.double().mean((1, 2)).numpy() / 255
            seen += 1
    if not seen:
        raise ValueError(f"none of the {count} sampled training images could be decoded")
    return [float(v) for v in total / seen]


def training_preprocessing(kind: str, mean, std, sampled_mean=None) -> dict:
    """The preprocessing record of a training run (stored in the backbone's meta).

    Args:
        kind: "paper" (0..255, mean subtracted, std 1) or "torchvision" ([0, 1], ImageNet
            mean and std).
        mean: "sample" (the training set's mean RGB, `sampled_mean`), "imagenet", or three
            numbers on the kind's value scale (0..255 for "paper", [0, 1] for "torchvision").
        std: three numbers, or None for the kind's default (1 or ImageNet's std).
        sampled_mean: mean RGB in [0, 1] from `sample_mean_rgb`, for mean="sample".
    """
    if kind not in PREPROCESSINGS:
        raise ValueError(f"preprocessing must be one of {PREPROCESSINGS}, got {kind!r}")
    scale = VALUE_SCALE[kind]
    if mean == "sample":
        values = [m * scale for m in sampled_mean]
    elif mean == "imagenet":
        values = IMAGENET_MEAN[kind]
    else:
        values = [float(m) for m in mean]
        if kind == "paper" and max(values) <= 1.0:
            # A 0..255 image whose mean is at most 1 is black: these are [0, 1] numbers.
            raise ValueError(f"mean {values} is on the [0, 1] scale, but the paper's "
                             "preprocessing takes 0..255 pixels; give a 0..255 mean (e.g. "
                             "123.68,116.779,103.939) or add --preprocessing torchvision")
    std = DEFAULT_STD[kind] if std is None else [float(s) for s in std]
    if len(values) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need three values each (R, G, B), got {mean!r}, {std!r}")
    return {"mean": [float(v) for v in values], "std": std, "channel_order": "RGB",
            "value_scale": scale}
