"""The UCI handwritten digits as a real image-folder dataset (nothing to download).

scikit-learn ships the 1,797 8x8 digit images of the UCI "optdigits" test set
(`sklearn.datasets.load_digits`, pixel values 0..16). `make_digits` writes them out as
upscaled grayscale PNG or JPEG files in the layouts the rest of vggfeat reads, so the demo
and the tests exercise the same decoding, reader and trainer code as a real dataset:

``split="none"``
    ``OUT/<digit>/<digit>_<index>.png`` for the chosen digits: a ``--dataset folder`` root.
``split="transfer"``
    The paper's transfer story in miniature. ``OUT/backbone/{train,val}/<digit>/...`` holds
    the backbone digits (0-4 by default; a seeded, stratified share goes to ``val``): the
    ImageNet layout that `vggfeat train-backbone --data` expects. ``OUT/transfer/<digit>/...``
    holds the other digits (5-9), which the backbone never sees: a ``--dataset folder`` root
    for `vggfeat extract` and `vggfeat svm-eval`.

``clutter=True`` (the demo's task)
    Each digit at a random side (about 1/3 to 5/8 of the canvas) and a random position on a
    ``size`` x ``size`` canvas, over uniform noise and two faded half-digit fragments of
    other images of the same part (backbone or transfer: the backbone never sees a transfer
    digit, even in pieces). Raw pixels are then a poor representation of the class, while a
    pooled, multi-scale descriptor is invariant to position and scale by construction.

File names carry the index into `load_digits` (``7_0123.png``), so any file can be traced
back to its source row. A ``digits.json`` manifest records what was written and from which
options; writing again with the same options into the same folder rewrites the same bytes.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

FORMATS = {"png": ".png", "jpeg": ".jpg"}
SPLITS = ("none", "transfer")
MANIFEST = "digits.json"
# load_digits stores ink as 0..16 on a 0 background; written files show dark ink on white
# paper (as the scanned forms did), which also keeps JPEG ringing off the background.
MAX_VALUE = 16.0
# The cluttered canvas (clutter=True): digit side as a share of the canvas (22..40 px of 64),
# noise amplitude and the faded half-digit fragments, all in ink units (0 paper, 1 ink).
CLUTTER = {"side": (0.34, 0.625), "noise": 0.25, "fragments": 2, "fragment_ink": 0.6}
MIN_CLUTTER_SIZE = 24


@dataclass
class DigitsLayout:
    """What `make_digits` wrote: folders to give to the other commands, and counts."""

    root: Path
    split: str
    folders: dict[str, str] = field(default_factory=dict)  # role -> folder relative to root
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # folder -> class -> n
    options: dict = field(default_factory=dict)

    def path(self, role: str) -> Path:
        """Absolute folder of a role: "all", "backbone", "backbone_train", "transfer" ..."""
        return self.root / self.folders[role]

    def to_json(self) -> str:
        data = asdict(self)
        data["root"] = str(self.root)
        return json.dumps(data, indent=1, sort_keys=True) + "\n"


def parse_digits(text: str) -> tuple[int, ...]:
    """'0-4' or '5,7,9' or '0-2,8' -> sorted unique digits; raises ValueError when bad."""
    digits: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"{text!r} is not a list of digits, e.g. 0-4 or 5,6,7") from None
        if not (0 <= first <= last <= 9):
            raise ValueError(f"{part!r} in {text!r}: digits run from 0 to 9, low-high")
        digits.update(range(first, last + 1))
    if not digits:
        raise ValueError(f"{text!r} names no digit; e.g. 0-4")
    return tuple(sorted(digits))


def load_digit_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 images (n, 8, 8) float in 0..16 and their labels (n,) from scikit-learn."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float64), bunch.target.astype(np.int64)


def render(image: np.ndarray, size: int) -> Image.Image:
    """One 8x8 digit (0..16 ink) -> a size x size grayscale image, dark ink on white.

    Bicubic upscaling gives smooth strokes, closer to a photographed digit than blocks.
    """
    gray = np.clip(255.0 * (1.0 - image / MAX_VALUE), 0, 255).round().astype(np.uint8)
    return Image.fromarray(gray, mode="L").resize((size, size), Image.Resampling.BICUBIC)


def ink(image: np.ndarray, side: int) -> np.ndarray:
    """One 8x8 digit (0..16) -> side x side ink in 0..1, bicubic (smooth strokes)."""
    small = Image.fromarray((image / MAX_VALUE).astype(np.float32), mode="F")
    return np.clip(np.asarray(small.resize((side, side), Image.Resampling.BICUBIC)), 0.0, 1.0)


def _stamp(canvas: np.ndarray, patch: np.ndarray, top: int, left: int) -> None:
    """Darkest-wins overlay of `patch` at (top, left); the part off the canvas is dropped."""
    size = canvas.shape[0]
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + patch.shape[0], size), min(left + patch.shape[1], size)
    if t0 < t1 and l0 < l1:
        region = canvas[t0:t1, l0:l1]
        np.maximum(region, patch[t0 - top:t1 - top, l0 - left:l1 - left], out=region)


def render_cluttered(images: np.ndarray, index: int, pool: np.ndarray, size: int,
                     seed: int) -> Image.Image:
    """Digit `index` at a random side and place on a cluttered size x size canvas.

    The clutter is uniform noise and `CLUTTER["fragments"]` half-digits of other images of
    `pool`, faded. Everything is drawn from a generator seeded by (seed, index) alone, so
    an image does not depend on which other images are written.
    """
    rng = np.random.default_rng([seed, 1, index])
    lo, hi = (round(share * size) for share in CLUTTER["side"])
    canvas = rng.uniform(0.0, CLUTTER["noise"], (size, size))
    others = pool[pool != index]
    for _ in range(CLUTTER["fragments"]):
        side = int(rng.integers(lo, hi + 1))
        piece = CLUTTER["fragment_ink"] * ink(images[int(rng.choice(others))], side)
        cut = side // 2  # blank the bottom, top, right or left half: a fragment, not a digit
        piece[(np.s_[cut:], np.s_[:cut], np.s_[:, cut:], np.s_[:, :cut])[rng.integers(4)]] = 0.0
        top, left = rng.integers(-side // 2, size - side // 2, size=2)
        _stamp(canvas, piece, int(top), int(left))
    side = int(rng.integers(lo, hi + 1))
    top, left = rng.integers(0, size - side + 1, size=2)
    _stamp(canvas, ink(images[index], side), int(top), int(left))
    gray = np.clip(255.0 * (1.0 - canvas), 0, 255).round().astype(np.uint8)
    return Image.fromarray(gray, mode="L")


def split_indices(labels: np.ndarray, digits, *, val_fraction: float, per_class: int | None,
                  seed: int) -> tuple[list[int], list[int]]:
    """Seeded, stratified (train, val) indices of the images of `digits`.

    Each class is shuffled with its own generator (seed, digit), so the images of one digit
    do not depend on which other digits were asked for. `per_class` keeps the first
    `per_class` of the shuffled images (train + val) of each class.
    """
    train, val = [], []
    for digit in digits:
        idx = np.flatnonzero(labels == digit)
        idx = np.random.default_rng([seed, digit]).permutation(idx)
        if per_class is not None:
            idx = idx[:per_class]
        n_val = int(round(val_fraction * len(idx)))
        val += sorted(idx[:n_val].tolist())
        train += sorted(idx[n_val:].tolist())
    return train, val


def _painter(images, labels, digits, size: int, clutter: bool, seed: int):
    """index -> image; a cluttered canvas takes its fragments from `digits`' images only."""
    if not clutter:
        return lambda i: render(images[i], size)
    pool = np.flatnonzero(np.isin(labels, digits))
    return lambda i: render_cluttered(images, i, pool, size, seed)


def _write(draw, labels, indices, folder: Path, suffix: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in indices:
        digit = str(int(labels[i]))
        target = folder / digit / f"{digit}_{i:04d}{suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        img = draw(i)
        if suffix == ".jpg":
            img.save(target, quality=95)
        else:
            img.save(target, optimize=False)
        counts[digit] = counts.get(digit, 0) + 1
    return dict(sorted(counts.items()))


def make_digits(out_dir, *, split: str = "transfer", size: int = 32, fmt: str = "png",
                backbone_digits="0-4", transfer_digits="5-9", digits="0-9",
                val_fraction: float = 0.2, per_class: int | None = None, seed: int = 0,
                clutter: bool = False, overwrite: bool = False) -> DigitsLayout:
    """Write scikit-learn's digits as an image-folder dataset.

    Parameters
    ----------
    out_dir : path-like
        Folder to create (or an empty one). A folder written before by `make_digits` is
        replaced only with ``overwrite=True``.
    split : {"transfer", "none"}
        "transfer": ``backbone/{train,val}/<digit>`` for `backbone_digits` and
        ``transfer/<digit>`` for `transfer_digits`; "none": ``<digit>`` folders of `digits`.
    size : int
        Side of the written square images, in pixels (>= 8).
    fmt : {"png", "jpeg"}
    backbone_digits, transfer_digits, digits : str or sequence of int
        Which digits go where, e.g. "0-4" or (5, 6, 7). Backbone and transfer digits must
        not overlap: the transfer digits are the classes the backbone never sees.
    val_fraction : float
        Share of each backbone digit's images written to ``backbone/val``.
    per_class : int, optional
        Keep at most this many images per digit (before the train/val split); all when None.
    seed : int
        Decides the train/val split, which images `per_class` keeps and, with `clutter`,
        every canvas (the same seed writes the same bytes).
    clutter : bool
        Place each digit at a random side and position on a `size` x `size` canvas with
        noise and fragments of other digits (see the module docstring); `size` >= 24.
    overwrite : bool
        Replace an earlier `make_digits` output in `out_dir`.

    Returns
    -------
    DigitsLayout
        The folders written (``layout.path("transfer")``, ...) and the images per class.

    Raises
    ------
    ValueError
        For bad options, or when `out_dir` holds other files (never deleted).

    Examples
    --------
    >>> layout = make_digits(tmp_path / "digits", per_class=10)  # doctest: +SKIP
    >>> sorted(layout.folders)  # doctest: +SKIP
    ['backbone', 'backbone_train', 'backbone_val', 'transfer']
    """
    options = _check_options(split, size, fmt, val_fraction, per_class, backbone_digits,
                             transfer_digits, digits, seed, clutter)
    root = Path(out_dir).expanduser().resolve()
    _prepare(root, overwrite)
    images, labels = load_digit_arrays()
    suffix = FORMATS[fmt]
    layout = DigitsLayout(root=root, split=split, options=options)
    if split == "none":
        keep, _ = split_indices(labels, options["digits"], val_fraction=0.0,
                                per_class=per_class, seed=seed)
        layout.folders = {"all": "."}
        draw = _painter(images, labels, options["digits"], size, clutter, seed)
        layout.counts = {".": _write(draw, labels, keep, root, suffix)}
    else:
        train, val = split_indices(labels, options["backbone_digits"],
                                   val_fraction=val_fraction, per_class=per_class, seed=seed)
        transfer, _ = split_indices(labels, options["transfer_digits"], val_fraction=0.0,
                                    per_class=per_class, seed=seed)
        layout.folders = {"backbone": "backbone", "backbone_train": "backbone/train",
                          "backbone_val": "backbone/val", "transfer": "transfer"}
        source = _painter(images, labels, options["backbone_digits"], size, clutter, seed)
        target = _painter(images, labels, options["transfer_digits"], size, clutter, seed)
        for folder, indices, draw in (("backbone/train", train, source),
                                      ("backbone/val", val, source),
                                      ("transfer", transfer, target)):
            layout.counts[folder] = _write(draw, labels, indices, root / folder, suffix)
    (root / MANIFEST).write_text(layout.to_json())
    return layout


def _check_options(split, size, fmt, val_fraction, per_class, backbone_digits,
                   transfer_digits, digits, seed, clutter) -> dict:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {tuple(FORMATS)}, not {fmt!r}")
    if int(size) < 8:
        raise ValueError(f"size {size} is smaller than the 8x8 source images; use >= 8")
    if clutter and int(size) < MIN_CLUTTER_SIZE:
        raise ValueError(f"size {size} is too small for a cluttered canvas (digits would be "
                         f"a few pixels); use >= {MIN_CLUTTER_SIZE}, e.g. 64")
    if split == "transfer" and not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), not {val_fraction}")
    if per_class is not None and per_class < (2 if split == "transfer" else 1):
        raise ValueError(f"per_class {per_class} is too small: the train/val split needs >= 2")

    def as_digits(value):
        return parse_digits(value) if isinstance(value, str) else tuple(sorted(set(value)))

    backbone, transfer = as_digits(backbone_digits), as_digits(transfer_digits)
    if split == "transfer" and set(backbone) & set(transfer):
        raise ValueError(f"backbone digits {backbone} and transfer digits {transfer} overlap; "
                         "the transfer digits must be ones the backbone never sees")
    if split == "transfer" and (len(backbone) < 2 or len(transfer) < 2):
        raise ValueError("give at least two backbone digits and two transfer digits")
    return {"split": split, "size": int(size), "format": fmt, "seed": int(seed),
            "val_fraction": float(val_fraction), "per_class": per_class,
            "backbone_digits": list(backbone), "transfer_digits": list(transfer),
            "digits": list(as_digits(digits)),
            "clutter": dict(CLUTTER) if clutter else None}


def _prepare(root: Path, overwrite: bool) -> None:
    """Make `root` an empty folder, deleting only an earlier make_digits output."""
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} is a file; give a folder to write the digits into")
    if root.is_dir() and any(root.iterdir()):
        if not (root / MANIFEST).is_file():
            raise ValueError(f"{root} is not empty and was not written by make-digits; "
                             "give a new or empty folder (nothing there was changed)")
        if not overwrite:
            raise ValueError(f"{root} already holds digits ({root / MANIFEST}); "
                             "pass --overwrite to write them again, or choose another folder")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
