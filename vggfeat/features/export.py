"""Look inside a feature cache and get its descriptors out (`vggfeat features info|export`).

`cache_summary` describes a cache (finished or ``.partial``) without loading it;
`export_features` writes its rows, aggregated over scales and L2-normalised as
`load_features` returns them, to ``.npy`` (plus the ids in a text file), ``.csv`` or
``.parquet``, with one row per image and its id, the layout feature-extraction tools such
as thingsvision write.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from vggfeat.features import cache

FORMATS = ("npy", "csv", "parquet")


class ExportError(ValueError):
    """A cache that cannot be described or exported as asked; the message says the fix."""


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def resolve(path: str | os.PathLike) -> Path:
    """`path`, or its ``.partial`` when only an unfinished extraction exists."""
    path = Path(path)
    if path.is_file():
        return path
    partial = cache.partial_path(path)
    if partial.is_file():
        return partial
    raise ExportError(f"{path}: no such feature file; create it with `vggfeat extract`")


def default_aggregate(dataset: str) -> str:
    """The dataset's way of combining scales (avg for VOC and custom data, stack for
    Caltech), as `vggfeat svm-eval` uses it."""
    from vggfeat.data.readers import READERS

    reader = READERS.get(dataset)
    return reader.default_aggregate if reader is not None else "avg"


def cache_summary(path: str | os.PathLike, *, compute_variation: bool = True) -> dict:
    """What a cache holds: its configuration, rows done/failed/pending, the descriptor
    shape, stored labels and the descriptor-variation statistic.

    The statistic (`vggfeat.diagnostics.descriptor_variation`, mean pairwise cosine
    distance between images' scale-averaged descriptors) is read from the file when the
    extraction stored it, else computed here (``variation_source`` says which).
    """
    path = resolve(path)
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            if "ids" not in f or "descriptors" not in f:
                raise ExportError(f"{path}: not a vggfeat feature cache (no ids/descriptors); "
                                  "create it with `vggfeat extract`")
            groups = {name: _group_counts(f[g]) for name, g in _group_names(f).items()}
            labels = json.loads(_text(attrs["classes"])) if "classes" in attrs else None
            failed = [(_text(i), _text(r)) for i, r in f["failed"][:5]] if "failed" in f else []
            has_splits = "splits" in f
    except OSError as error:
        raise ExportError(f"{path}: not a readable HDF5 feature cache ({error})") from None
    summary = {
        "path": str(path),
        "complete": not path.name.endswith(".partial"),
        "dataset": _text(attrs.get("dataset", "")),
        "root": _text(attrs.get("root", "")),
        "arch": _text(attrs.get("arch", "")),
        "weights_sha256": _text(attrs.get("weights_sha256", "")),
        "layer": _text(attrs.get("layer", "")),
        "scales": [int(s) for s in np.atleast_1d(attrs.get("scales", []))],
        "flip": bool(attrs.get("flip", False)),
        "precision": _text(attrs.get("precision", "")),
        "dtype": _text(attrs.get("dtype", "")),
        "reader_options": json.loads(_text(attrs.get("reader_options", "{}")) or "{}"),
        "vggfeat_version": _text(attrs.get("vggfeat_version", "")),
        "groups": groups,
        "dimension": groups["images"]["dimension"],
        "classes": labels,
        "stored_splits": has_splits,
        "failed_examples": failed,
    }
    summary.update(_variation(path, attrs, groups["images"]["done"], compute_variation))
    return summary


def _group_names(f: h5py.File) -> dict[str, str]:
    names = {"images": cache.ROOT_GROUP}
    if cache.BOXES_GROUP in f:
        names["boxes"] = cache.BOXES_GROUP
    return names


def _group_counts(g: h5py.Group) -> dict:
    done = g["done"][()]
    failed = len(g["failed"]) if "failed" in g else 0
    n, n_scales, dim = g["descriptors"].shape
    return {"rows": int(n), "done": int(done.sum()), "failed": int(failed),
            "pending": int(n - done.sum() - failed), "scales": int(n_scales),
            "dimension": int(dim)}


def _variation(path: Path, attrs: dict, n_done: int, compute: bool) -> dict:
    from vggfeat.diagnostics import LOW_VARIATION, VARIATION_ATTR, descriptor_variation

    if VARIATION_ATTR in attrs:
        value, source = float(attrs[VARIATION_ATTR]), "stored"
    elif compute and n_done:
        with h5py.File(path, "r") as f:
            done, rows = f["done"][()], f["descriptors"]
            chunk = 1024
            blocks = (rows[s:s + chunk][done[s:s + chunk]] for s in range(0, len(done), chunk))
            value, source = descriptor_variation(blocks), "computed"
    else:
        return {"variation": None, "variation_source": None, "variation_low": None}
    low = bool(np.isfinite(value) and value < LOW_VARIATION)
    return {"variation": value, "variation_source": source, "variation_low": low}


def format_summary(summary: dict) -> str:
    """`cache_summary` as the lines `vggfeat features info` prints."""
    images = summary["groups"]["images"]
    state = "complete" if summary["complete"] else (
        f"UNFINISHED: {images['done']} of {images['rows']} rows done; rerun the same "
        "`vggfeat extract` to finish")
    rows = [
        ("file", f"{summary['path']} ({state})"),
        ("dataset", f"{summary['dataset']} at {summary['root'] or '?'}"
         + (f", options {summary['reader_options']}" if summary["reader_options"] else "")),
        ("net", f"{summary['arch']} (weights sha256 {summary['weights_sha256'][:12]})"),
        ("layer", summary["layer"]),
        ("scales", ", ".join(map(str, summary["scales"]))
         + (" (flip-averaged)" if summary["flip"] else "")),
        ("storage", f"{summary['dtype']}, computed in {summary['precision']}; per scale, "
                    "not normalised (L2 when read)"),
        ("dimension", f"{summary['dimension']} per scale: {summary['dimension']} averaged, "
                      f"{summary['dimension'] * len(summary['scales'])} stacked"),
    ]
    for name, g in summary["groups"].items():
        rows.append((name, f"{g['rows']} rows: {g['done']} done, {g['failed']} failed, "
                           f"{g['pending']} pending"))
    for image_id, reason in summary["failed_examples"]:
        rows.append(("failed", f"{image_id}: {reason}"))
    if summary["classes"] is not None:
        rows.append(("labels", f"{len(summary['classes'])} classes stored"
                               + (" with splits" if summary["stored_splits"] else "")))
    if summary["variation"] is not None:
        note = "LOW: nearly the same descriptor for every image" if summary["variation_low"] \
            else "ok"
        rows.append(("variation", f"{summary['variation']:.3g} mean pairwise cosine distance "
                                  f"({summary['variation_source']}; {note})"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:>{width}}: {v}" for k, v in rows)


# -- export ------------------------------------------------------------------------------

def default_export_path(path: str | os.PathLike, fmt: str, aggregate: str) -> Path:
    path = Path(path)
    stem = path.name.removesuffix(".partial").removesuffix(".h5")
    return path.with_name(f"{stem}-{aggregate}.{fmt}")


def ids_path(out: Path) -> Path:
    """Where `.npy` exports keep the row ids (one per line, in row order)."""
    return out.with_name(out.stem + ".ids.txt")


def export_features(path: str | os.PathLike, out: str | os.PathLike, fmt: str, *,
                    aggregate: str | None = None, l2: bool = True, boxes: bool = False,
                    overwrite: bool = False) -> list[Path]:
    """Write a cache's done rows as an (n, D) table; returns the files written.

    Args:
        path: the cache (``.h5``; its ``.partial`` works too, with the rows done so far).
        out: the output file.
        fmt: "npy" (float32 array; ids in `ids_path(out)`), "csv" or "parquet" (an ``id``
            column then ``f0 .. f{D-1}``).
        aggregate: "avg" or "stack" over scales (default: the dataset's, as svm-eval).
        l2: L2-normalise each row (what svm-eval and `load_features` use).
        boxes: the person boxes of a voc2012-action cache instead of its images.
        overwrite: replace existing output files.

    Raises:
        ExportError: unknown format, an existing output without `overwrite`, parquet without
            an engine installed.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    source = resolve(path)
    out = Path(out)
    targets = [out, ids_path(out)] if fmt == "npy" else [out]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise ExportError(f"{', '.join(existing)} exists; choose another --out, or --overwrite "
                          "to replace it")
    if fmt == "parquet":
        _require_parquet_engine()
    summary = cache_summary(source, compute_variation=False)
    if boxes and "boxes" not in summary["groups"]:
        raise ExportError(f"{source} has no person boxes (only voc2012-action caches do); "
                          "leave out --boxes")
    aggregate = aggregate or default_aggregate(summary["dataset"])
    ids, x = _rows(source, aggregate, l2, cache.BOXES_GROUP if boxes else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "npy":
        np.save(out, x)
        ids_path(out).write_text("".join(f"{i}\n" for i in ids))
    else:
        import pandas as pd

        table = pd.DataFrame(x, columns=[f"f{k}" for k in range(x.shape[1])])
        table.insert(0, "id", ids)
        if fmt == "csv":
            table.to_csv(out, index=False, float_format="%.7g")
        else:
            table.to_parquet(out, index=False)
    return targets


def _rows(path: Path, aggregate: str, l2: bool, group: str | None):
    """(ids, (n, D) float32) of the done rows, as `load_features` computes them (which
    only reads finished files, so a partial file is read here the same way)."""
    with h5py.File(path, "r") as f:
        g = f[group or cache.ROOT_GROUP]
        done = g["done"][()]
        ids = [_text(i) for i in g["ids"][()][done]]
        descriptors = g["descriptors"][()][done].astype(np.float32)
    x = cache.aggregate_scales(descriptors, aggregate)
    return ids, (cache.l2_normalize(x) if l2 else x).astype(np.float32)


def _require_parquet_engine() -> None:
    import importlib.util

    if not any(importlib.util.find_spec(m) for m in ("pyarrow", "fastparquet")):
        raise ExportError("writing parquet needs pyarrow (or fastparquet), which is not "
                          "installed: `pip install pyarrow`, or export --to npy or csv")
