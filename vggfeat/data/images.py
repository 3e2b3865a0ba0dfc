"""Robust image decoding: any file a dataset may hold -> an 8-bit RGB PIL image.

Whatever the stored form (grayscale, CMYK, palette, RGBA, 16-bit, EXIF-rotated), the
descriptor pipeline sees plain RGB. Anything that cannot be decoded raises `BadImageError`
naming the file and the reason, so that a long extraction can record it and go on.

Choices (documented, see paper Appendix B for the descriptor):

- Alpha is dropped, not composited (torchvision's ``convert("RGB")`` convention).
- 16-bit and 32-bit integer grayscale are scaled from 0..65535 to 0..255; float images are
  clipped to 0..255.
- The EXIF orientation tag is applied before anything else, boxes included.
- An image with more than `MAX_PIXELS` pixels is refused before its pixels are decoded
  (a "decompression bomb": a small file that would expand to gigabytes).
- ``draft_size`` (training): a JPEG may be decoded at a reduced size (libjpeg's DCT
  scaling) as long as its smallest side stays at least that large; extraction never asks
  for it, so its pixels are the full-size decode.

`IMAGE_SUFFIXES` is the one list of file suffixes that every folder scan (dataset readers,
the trainer's ImageFolder trees, ILSVRC) counts as images.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vggfeat.utils.errors import InputError

# Pillow's own warning threshold (~89.5 Mpixels, a 9459 x 9459 image).
MAX_PIXELS = 89_478_485
JPEG_MAGIC = b"\xff\xd8\xff"
EXIF_ORIENTATION = 0x0112
# Suffixes counted as images when scanning folders (lower-cased); anything else is a stray
# entry (Caltech-256 ships a few, e.g. "RENAME2" and "greg" in 198.spider / 056.dog).
# GIF is in: `open_rgb` decodes it (first frame, palette transparency dropped), so a GIF
# in a class folder is used by extraction and training alike rather than silently skipped.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


class BadImageError(InputError):
    """An image file that cannot be used; ``reason`` says why, ``path`` which file."""

    def __init__(self, path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}; replace or remove the file "
                         "(vggfeat extract records it in `failed` and goes on)")


def is_image_file(path: Path) -> bool:
    """A visible file whose suffix is one of `IMAGE_SUFFIXES`."""
    visible = not path.name.startswith(".")
    return visible and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def open_rgb(path: str | os.PathLike, box: tuple[int, int, int, int] | None = None,
             max_pixels: int = MAX_PIXELS, *, draft_size: int | None = None) -> Image.Image:
    """Decode an image file to an 8-bit RGB PIL image.

    Args:
        path: the image file.
        box: optional 0-based (x0, y0, x1, y1) region, exclusive end, in the upright
            (EXIF-rotated) image; clipped to the image.
        max_pixels: refuse images with more pixels than this (decompression bombs).
        draft_size: decode a JPEG at a reduced size whose smallest side is still at least
            this (the main decoding speed-up of training at S=256); None: full size.

    Raises:
        BadImageError: missing, empty, not an image, corrupt, truncated, too large, or an
            empty box.
    """
    path = Path(path)
    _check_file(path)
    try:
        with warnings.catch_warnings():
            # Pillow warns (and above 2x raises) on bombs; we apply our own limit below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise BadImageError(path, f"decompression bomb: {width} x {height} = "
                                        f"{width * height} pixels exceeds {max_pixels}")
                if draft_size and image.format == "JPEG":
                    _draft(image, draft_size)
                image.load()  # decode now, so truncation and corruption surface here
                image = ImageOps.exif_transpose(image)
                rgb = to_rgb(image)
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(path, "not an image (no decoder recognises its format)") from None
    except Image.DecompressionBombError as error:
        raise BadImageError(path, f"decompression bomb: {error}") from None
    except Exception as error:  # decoders of malformed files raise anything
        # (OSError, SyntaxError, struct.error, IndexError, ...): one bad file, not a crash.
        kind = "truncated" if "truncated" in str(error).lower() else "corrupt"
        raise BadImageError(path, f"{kind} image data ({type(error).__name__}: {error})") \
            from None
    return crop(rgb, box, path) if box is not None else rgb


def _draft(image: Image.Image, draft_size: int) -> None:
    """Ask libjpeg for the smallest DCT scaling that keeps the short side >= draft_size."""
    width, height = image.size
    ratio = draft_size / min(width, height)
    image.draft("RGB", (int(width * ratio) + 1, int(height * ratio) + 1))


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise BadImageError(path, "no such file")
    if path.stat().st_size == 0:
        raise BadImageError(path, "empty file (0 bytes)")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (alpha dropped, 16-bit scaled down)."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        array = np.asarray(image)
        if image.mode == "F":
            array = np.clip(array, 0, 255)
        else:  # 16-bit data, whatever the container (I;16, I;16B, I)
            array = np.clip(array.astype(np.float64), 0, 65535) * (255.0 / 65535.0)
        return Image.fromarray(np.round(array).astype(np.uint8), "L").convert("RGB")
    if image.mode == "P":
        # Via RGBA so a transparency entry in the palette is honoured, then alpha dropped.
        image = image.convert("RGBA")
    return image.convert("RGB")


def crop(image: Image.Image, box: tuple[int, int, int, int], path: Path) -> Image.Image:
    """Crop a 0-based, exclusive-end box, clipped to the image; empty -> BadImageError."""
    x0, y0, x1, y1 = (int(v) for v in box)
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, image.width), min(y1, image.height)
    if x1 <= x0 or y1 <= y0:
        raise BadImageError(path, f"box {tuple(box)} is empty inside the "
                            f"{image.width} x {image.height} image")
    return image.crop((x0, y0, x1, y1))


def device_decodable(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> bool:
    """Whether torchvision's ``decode_jpeg`` (on a GPU: nvJPEG) gives this file's RGB as
    `open_rgb` does: a JPEG, colour or grayscale (not CMYK), upright (no EXIF rotation,
    which the GPU decoder does not apply), within `max_pixels`. Reads the header only.

    Anything else -- other formats, rotated or CMYK JPEGs, unreadable files -- is decoded
    on the CPU by `open_rgb`, which also gives the one-line reason for a bad file.
    """
    try:
        with open(path, "rb") as f:
            if f.read(3) != JPEG_MAGIC:
                return False
        with Image.open(path) as image:
            return (image.format == "JPEG" and image.mode in ("RGB", "L")
                    and image.width * image.height <= max_pixels
                    and image.getexif().get(EXIF_ORIENTATION, 1) == 1)
    except Exception:  # unreadable or malformed: the CPU path reports it properly
        return False
