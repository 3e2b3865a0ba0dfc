"""Generated localisation data (real JPEGs, CSV and PASCAL-style XML files; no downloads).

Each image is noise with one object (a filled rectangle or disc of the class's colour) at a
random position and size: where the box is must be read from the pixels.
"""
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"n01": (230, 40, 40), "n02": (40, 90, 230)}  # two "wnids"


def draw_object(rng: np.random.Generator, colour, size=(64, 80)):
    """(image, box): noise background, one object; box xyxy, 0-based, exclusive end."""
    w, h = (int(v) for v in rng.integers(size[0], size[1] + 1, 2))
    background = rng.integers(60, 140, (h, w, 1)) + rng.integers(-30, 31, (h, w, 3))
    img = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    bw = int(rng.integers(w // 5, int(w * 0.8)))
    bh = int(rng.integers(h // 5, int(h * 0.8)))
    x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
    fill = tuple(int(c + rng.integers(-20, 21)) for c in colour)
    draw = ImageDraw.Draw(img)
    if rng.random() < 0.5:
        draw.rectangle((x0, y0, x0 + bw - 1, y0 + bh - 1), fill=fill)
    else:
        draw.ellipse((x0, y0, x0 + bw - 1, y0 + bh - 1), fill=fill)
    return img, (x0, y0, x0 + bw, y0 + bh)


def make_loc_csv(root: Path, n_train: int = 16, n_val: int = 8, seed: int = 0,
                 colours: dict = COLOURS, size=(64, 80)) -> Path:
    """root/images/*.jpg and root/boxes.csv (path,label,xmin,ymin,xmax,ymax,split)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = ["path,label,xmin,ymin,xmax,ymax,split"]
    for split, n in (("train", n_train), ("val", n_val)):
        for name, colour in colours.items():
            for i in range(n):
                img, box = draw_object(rng, colour, size)
                rel = f"images/{split}_{name}_{i:04d}.jpg"
                img.save(root / rel, quality=92)
                lines.append(f"{rel},{name},{','.join(map(str, box))},{split}")
    (root / "boxes.csv").write_text("\n".join(lines) + "\n")
    return root / "boxes.csv"


def voc_xml(filename: str, size, objects) -> str:
    """A PASCAL/ILSVRC annotation: objects are (name, (xmin, ymin, xmax, ymax)), 1-based."""
    body = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for name, b in objects)
    return (f"<annotation><folder>x</folder><filename>{filename}</filename><size><width>"
            f"{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>{body}"
            "</annotation>")


def make_ilsvrc(root: Path, n_train: int = 4, n_val: int = 3, seed: int = 0,
                colours: dict = COLOURS, unannotated: int = 1) -> Path:
    """ROOT/Data/CLS-LOC/{train/<wnid>,val} JPEGs and ROOT/Annotations/CLS-LOC XMLs.

    Each train class also gets `unannotated` images without XML (ILSVRC's case). Box
    files are 1-based inclusive, as the devkit's: xyxy (x0, y0, x1, y1) is written as
    (x0 + 1, y0 + 1, x1, y1).
    """
    rng = np.random.default_rng(seed)
    data, ann = root / "Data" / "CLS-LOC", root / "Annotations" / "CLS-LOC"
    for name, colour in colours.items():
        (data / "train" / name).mkdir(parents=True, exist_ok=True)
        (ann / "train" / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_train + unannotated):
            img, box = draw_object(rng, colour)
            stem = f"{name}_{i}"
            img.save(data / "train" / name / f"{stem}.JPEG", quality=92)
            if i < n_train:
                one_based = (box[0] + 1, box[1] + 1, box[2], box[3])
                (ann / "train" / name / f"{stem}.xml").write_text(
                    voc_xml(stem, img.size, [(name, one_based)]))
    (data / "val").mkdir(parents=True, exist_ok=True)
    (ann / "val").mkdir(parents=True, exist_ok=True)
    for i in range(n_val * len(colours)):
        name = list(colours)[i % len(colours)]
        img, box = draw_object(rng, colours[name])
        stem = f"ILSVRC2012_val_{i + 1:08d}"
        img.save(data / "val" / f"{stem}.JPEG", quality=92)
        one_based = (box[0] + 1, box[1] + 1, box[2], box[3])
        (ann / "val" / f"{stem}.xml").write_text(voc_xml(stem, img.size, [(name, one_based)]))
    return root
