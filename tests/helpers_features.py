"""Shared by the feature tests: bad image files, an independent float64 descriptor, cache diff.

The float64 reference shares no code with vggfeat's pipeline: the resize is PIL's/torch's
antialiased bilinear written out as resampling matrices in numpy, the net is plain
conv/relu/max-pool calls on float64 copies of the weights, and fc6/fc7 are convolutions
built here from the Linear weights. Conv layers are named here as the paper's Table 1 names
them (conv<block>_<n>, blocks separated by max pools), counted independently of vggfeat.
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

# -- images ----------------------------------------------------------------------------------


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth-ish random uint8 RGB pixels (noise plus a gradient, so resizing matters)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, size=(height, width, 3))
    ramp = np.linspace(0, 255, width)[None, :, None]
    return ((noise + ramp) / 2).astype(np.uint8)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")
    return path


def write_bad_images(folder: Path) -> dict[str, str]:
    """One file of each bad kind; returns file name -> a word its reason must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    good = io.BytesIO()
    Image.fromarray(random_rgb(48, 64, seed=7)).save(good, format="JPEG", quality=90)
    jpeg = good.getvalue()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "corrupt.png").write_bytes(corrupt_png())
    (folder / "bomb.png").write_bytes(bomb_png(30_000, 30_000))
    return {"empty.jpg": "empty", "text.jpg": "not an image", "truncated.jpg": "truncated",
            "corrupt.png": "corrupt", "bomb.png": "decompression bomb"}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def corrupt_png() -> bytes:
    """A PNG whose pixel data is not valid zlib (the chunk CRC is right, the content wrong)."""
    header = struct.pack(">IIBBBBB", 32, 32, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", b"\x78\x9c" + bytes(range(200))) + _chunk(b"IEND", b""))


def bomb_png(width: int, height: int) -> bytes:
    """A tiny file declaring width x height 8-bit gray pixels (900 Mpixels by default)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = b"\x00" + bytes(width)
    data = zlib.compress(row * 4)  # far fewer rows than declared: never decoded anyway
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data)
            + _chunk(b"IEND", b""))


# -- float64 reference -----------------------------------------------------------------------


def resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of antialiased bilinear resampling (Pillow's algorithm)."""
    scale = n_in / n_out
    support = max(scale, 1.0)  # the triangle widens when downscaling
    matrix = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        j = np.arange(lo, hi)
        w = np.maximum(0.0, 1.0 - np.abs((j - centre + 0.5) / support))
        matrix[i, lo:hi] = w / w.sum()
    return matrix


def reference_resize(pixels: np.ndarray, q: int) -> np.ndarray:
    """uint8 (H, W, 3) -> float64 (3, h, w) in [0, 1], smallest side q (half-up rounding)."""
    height, width = pixels.shape[:2]
    short = min(height, width)
    h = q if height == short else int(np.floor(height * q / short + 0.5))
    w = q if width == short else int(np.floor(width * q / short + 0.5))
    x = pixels.astype(np.float64).transpose(2, 0, 1) / 255.0
    rows, cols = resample_matrix(height, h), resample_matrix(width, w)
    return np.stack([rows @ channel @ cols.T for channel in x])


def reference_dense(model, x: torch.Tensor, layer: str) -> torch.Tensor:
    """Dense map of a VGG (no BN/LRN) in float64 from plain torch ops; `layer` a conv layer
    (after its ReLU), pool5, fc6 or fc7."""
    x = x.double()
    block, n = 1, 0
    for module in model.features:
        if isinstance(module, nn.Conv2d):
            x = F.conv2d(x, module.weight.detach().double(), module.bias.detach().double(),
                         padding=module.padding)
            n += 1
        elif isinstance(module, nn.ReLU):
            x = F.relu(x)
            if layer == f"conv{block}_{n}":
                return x
        elif isinstance(module, nn.MaxPool2d):
            x = F.max_pool2d(x, 2, 2)
            block, n = block + 1, 0
        else:
            raise NotImplementedError(type(module))
    if layer.startswith("conv"):
        raise ValueError(f"no {layer} in this net")
    if layer == "pool5":
        return x
    fc6, fc7 = model.classifier[0], model.classifier[3]
    k = int(round((fc6.in_features / x.shape[1]) ** 0.5))
    w6 = fc6.weight.detach().double().reshape(fc6.out_features, x.shape[1], k, k)
    x = F.relu(F.conv2d(x, w6, fc6.bias.detach().double()))
    if layer == "fc6":
        return x
    w7 = fc7.weight.detach().double()[:, :, None, None]
    return F.relu(F.conv2d(x, w7, fc7.bias.detach().double()))


def reference_descriptor(model, pixels: np.ndarray, scales, layer: str = "fc7",
                         flip: bool = True, pool: str = "avg") -> np.ndarray:
    """(S, D) float64: per scale, the map's mean (or `pool` "max": maximum) over positions,
    averaged with the flipped image's."""
    pre = model.meta["preprocessing"]
    rows = []
    for q in scales:
        x = reference_resize(pixels, q)
        if pre["channel_order"] == "BGR":
            x = x[::-1]
        x = (x * pre["value_scale"] - np.array(pre["mean"])[:, None, None]) \
            / np.array(pre["std"])[:, None, None]
        batch = torch.from_numpy(np.ascontiguousarray(x))[None]
        views = [batch, batch.flip(-1)] if flip else [batch]
        maps = [reference_dense(model, v, layer)[0] for v in views]
        pooled = [m.amax(dim=(1, 2)) if pool == "max" else m.mean(dim=(1, 2)) for m in maps]
        rows.append(torch.stack(pooled).mean(0).numpy())
    return np.stack(rows)


# -- cache comparison ------------------------------------------------------------------------


def read_cache(path) -> dict:
    """Every dataset and attribute of a cache file, as numpy / Python values."""
    out = {}
    with h5py.File(path, "r") as f:
        out["attrs"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                        for k, v in f.attrs.items()}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]

        f.visititems(visit)
    return out


def assert_same_cache(a, b, atol: float = 1e-5) -> None:
    """Same datasets, same attributes, descriptors equal to float rounding on done rows."""
    left, right = read_cache(a), read_cache(b)
    assert left["attrs"] == right["attrs"]
    assert sorted(left) == sorted(right)
    for name in left:
        if name == "attrs":
            continue
        if name.endswith("descriptors") or "layers/" in name:  # a multi-layer cache's rows
            group = name.rpartition("descriptors")[0] if name.endswith("descriptors") \
                else name.split("layers/")[0]
            done = left[group + "done"]
            np.testing.assert_allclose(left[name][done], right[name][done], rtol=1e-4,
                                       atol=atol, err_msg=name)
        elif name.endswith("checksums"):  # of rows equal only to float rounding: each file's
            from vggfeat.features import cache  # checksums must match its own rows instead
            assert cache.verify(a).ok and cache.verify(b).ok
        else:
            np.testing.assert_array_equal(left[name], right[name], err_msg=name)
