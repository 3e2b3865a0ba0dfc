"""Generated image-folder datasets for the trainer's tests (real JPEG files, no downloads)."""
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# Four classes a narrow net can tell apart in a few epochs: colour and shape both differ.
CLASSES = {
    "blue_square": ((40, 60, 220), "square"),
    "green_triangle": ((40, 200, 60), "triangle"),
    "red_disc": ((220, 40, 40), "disc"),
    "yellow_stripes": ((230, 210, 40), "stripes"),
}


def draw_image(rng: np.random.Generator, colour, shape: str) -> Image.Image:
    """A noisy grey background (48..96 px sides) with one coloured shape on it."""
    w, h = (int(v) for v in rng.integers(48, 97, 2))
    background = rng.integers(90, 150, (h, w, 1)) + rng.integers(-20, 21, (h, w, 3))
    img = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    side = int(rng.integers(min(w, h) // 2, min(w, h) - 4))
    x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    jitter = tuple(int(c + rng.integers(-25, 26)) for c in colour)
    if shape == "square":
        draw.rectangle((x0, y0, x0 + side, y0 + side), fill=jitter)
    elif shape == "triangle":
        draw.polygon([(x0, y0 + side), (x0 + side, y0 + side), (x0 + side // 2, y0)], fill=jitter)
    elif shape == "disc":
        draw.ellipse((x0, y0, x0 + side, y0 + side), fill=jitter)
    else:
        for y in range(y0, y0 + side, 8):
            draw.rectangle((x0, y, x0 + side, y + 3), fill=jitter)
    return img


def make_image_folder(root: Path, n_train: int = 24, n_val: int = 8, seed: int = 0,
                      classes: dict = CLASSES) -> Path:
    """Write root/train/<class>/*.jpg and root/val/<class>/*.jpg; returns root."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for name, (colour, shape) in classes.items():
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw_image(rng, colour, shape).save(folder / f"{name}_{i:03d}.jpg", quality=90)
    return Path(root)


# Narrow VGG-A of the tests (channels 8..64, fc 512, fc6 kernel 2), as CLI options.
TINY_OPTIONS = ["--arch", "A", "--width", "0.125", "--crop-size", "64", "--scale", "64",
                "--init", "xavier", "--workers", "0", "--quiet"]


def later_options_win(args: list) -> list[str]:
    """`args` with an option of TINY_OPTIONS that a test gives again later (its override)
    kept only at its last place: the CLI itself refuses a single-value option given twice."""
    words = [str(a) for a in args]
    starts = [k for k, w in enumerate(words) if w.startswith("--")] + [len(words)]
    groups = [words[a:b] for a, b in zip(starts, starts[1:], strict=False)]
    last = {g[0]: k for k, g in enumerate(groups)}
    keep = [g for k, g in enumerate(groups) if g[0] not in TINY_OPTIONS or last[g[0]] == k]
    return words[:starts[0]] + [w for g in keep for w in g]


def run_cli(args: list[str]):
    """Invoke `vggfeat ARGS` in this process (see `later_options_win`); returns the click
    Result."""
    from click.testing import CliRunner

    from vggfeat.cli import cli

    return CliRunner().invoke(cli, later_options_win(args), catch_exceptions=False)
