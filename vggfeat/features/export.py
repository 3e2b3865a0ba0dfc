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

import numpy as np

from vggfeat.features import cache
from vggfeat.utils import atomic
from vggfeat.utils.errors import InputError

FORMATS = ("npy", "csv", "parquet")


class ExportError(InputError):
    """A cache that cannot be described or exported as asked; the message says the fix."""


def resolve(path: str | os.PathLike) -> Path:
    """`path`, or its ``.partial`` when only an unfinished extraction exists."""
    path = Path(path)
    if path.is_file():
        return path
    partial = cache.partial_path(path)
    if partial.is_file():
        return partial
    if path.is_dir():  # e.g. the image folder given where its cache was meant
        raise ExportError(f"{path} is a folder, not a feature file: give the .h5 file that "
                          "`vggfeat extract` wrote (its --out)")
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

    The statistic (`vggfeat.features.cache.descriptor_variation`, mean pairwise cosine
    distance between images' scale-averaged descriptors) is read from the file when the
    extraction stored it, else computed here (``variation_source`` says which).
    """
    path = resolve(path)
    try:
        overview = cache.read_overview(path, failed_examples=5)
        if not overview.has_rows or "images" not in overview.counts:
            raise ExportError(f"{path}: not a vggfeat feature cache (no ids/descriptors); "
                              "create it with `vggfeat extract`")
    except OSError as error:
        raise ExportError(f"{path}: not a readable HDF5 feature cache ({error})") from None
    attrs, groups = overview.attrs, overview.counts
    summary = {
        "path": str(path),
        "complete": not cache.is_partial(path),
        "dataset": str(attrs.get("dataset", "")),
        "root": str(attrs.get("root", "")),
        "arch": str(attrs.get("arch", "")),
        "weights_sha256": str(attrs.get("weights_sha256", "")),
        "layer": str(attrs.get("layer", "")),
        "layers": overview.layers,
        "layer_dims": overview.layer_dims,
        "pool": str(attrs.get("pool", "avg")),
        "scales": [int(s) for s in np.atleast_1d(attrs.get("scales", []))],
        "flip": bool(attrs.get("flip", False)),
        "precision": str(attrs.get("precision", "")),
        "dtype": str(attrs.get("dtype", "")),
        "reader_options": json.loads(str(attrs.get("reader_options", "{}")) or "{}"),
        "vggfeat_version": str(attrs.get("vggfeat_version", "")),
        "groups": groups,
        "dimension": groups["images"]["dimension"],
        "classes": overview.classes,
        "stored_splits": overview.has_splits,
        "failed_examples": overview.failed_examples,
    }
    summary.update(_variation(path, compute_variation))
    return summary


def verify_cache(path: str | os.PathLike) -> cache.Verification:
    """Every done row of the cache (or its ``.partial``) checked against its checksum."""
    return cache.verify(resolve(path))


def _variation(path: Path, compute: bool) -> dict:
    value, source = cache.variation_and_source(path, compute=compute)
    if value is None:
        return {"variation": None, "variation_source": None, "variation_low": None}
    low = bool(np.isfinite(value) and value < cache.LOW_VARIATION)
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
        _layer_row(summary),
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


def _layer_row(summary: dict) -> tuple[str, str]:
    """("layer", "fc7"), or ("layers", "conv5_3 (512), fc7 (4096)") for a multi-layer cache
    (the first is the one read unless another is chosen); the pooling when it is max."""
    pooled = " (max over positions)" if summary["pool"] != "avg" else ""
    if len(summary["layers"]) < 2:
        return "layer", summary["layer"] + pooled
    dims = summary["layer_dims"]
    listed = ", ".join(f"{name} ({dims.get(name, '?')})" for name in summary["layers"])
    return "layers", f"{listed}{pooled}; dimension below: {summary['layers'][0]} (--layer " \
                     "chooses)"


# -- export ------------------------------------------------------------------------------

def default_export_path(path: str | os.PathLike, fmt: str, aggregate: str,
                        layer: str | None = None) -> Path:
    path = Path(path)
    stem = cache.final_path(path).name.removesuffix(".h5")
    return path.with_name(f"{stem}{f'-{layer}' if layer else ''}-{aggregate}.{fmt}")


def ids_path(out: Path) -> Path:
    """Where `.npy` exports keep the row ids (one per line, in row order)."""
    return out.with_name(out.stem + ".ids.txt")


def export_features(path: str | os.PathLike, out: str | os.PathLike, fmt: str, *,
                    aggregate: str | None = None, l2: bool = True, boxes: bool = False,
                    overwrite: bool = False, layer: str | None = None) -> list[Path]:
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
        layer: which layer of a cache holding several (default: its first).

    Raises:
        ExportError: unknown format, an existing output without `overwrite`, parquet without
            an engine installed, a layer the cache does not hold.
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
    if layer is not None and layer not in summary["layers"]:
        raise ExportError(f"{source} holds no layer {layer!r}; it holds "
                          f"{', '.join(summary['layers'])}: choose one of those with --layer")
    aggregate = aggregate or default_aggregate(summary["dataset"])
    out.parent.mkdir(parents=True, exist_ok=True)
    group = cache.BOXES_GROUP if boxes else None
    # Streamed block by block (`cache.aggregated_rows`): memory is one block, whatever the
    # cache's size; each file appears whole or not at all (`atomic`).
    with cache.aggregated_rows(source, aggregate, l2, group, layer) as (ids, width, blocks):
        WRITERS[fmt](out, ids, width, blocks)
    if fmt == "npy":
        atomic.write_text(ids_path(out), "".join(f"{i}\n" for i in ids))
    return targets


def _write_npy(out: Path, ids: list[str], width: int, blocks) -> None:
    """The .npy header (format 1.0, as `np.save` writes it), then the rows block by block:
    the same bytes as `np.save` of the whole array. Plain writes, not a memory map, whose
    written pages would count as the process's memory."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
              "fortran_order": False, "shape": (len(ids), width)}
    with atomic.replacing(out) as tmp, open(tmp, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        for _, _, rows in blocks:
            fh.write(rows.tobytes())


def _write_csv(out: Path, ids: list[str], width: int, blocks) -> None:
    """``id,f0,..`` then the rows, each block through pandas' C writer (%.7g)."""
    import pandas as pd

    columns = [f"f{k}" for k in range(width)]
    with atomic.replacing(out) as tmp, open(tmp, "w", newline="") as fh:
        first = True
        for start, stop, rows in blocks:
            table = pd.DataFrame(rows, columns=columns)
            table.insert(0, "id", ids[start:stop])
            table.to_csv(fh, index=False, header=first, float_format="%.7g",
                         lineterminator="\n")
            first = False
        if first:  # no rows: the header alone, as pandas writes an empty table
            pd.DataFrame(columns=["id", *columns]).to_csv(fh, index=False,
                                                          lineterminator="\n")


def _write_parquet(out: Path, ids: list[str], width: int, blocks) -> None:
    """One row group per block with pyarrow's ParquetWriter (pandas' to_parquet schema);
    with fastparquet only, the rows are gathered and written at once."""
    import importlib.util

    import pandas as pd

    columns = [f"f{k}" for k in range(width)]

    def table(start, stop, rows):
        frame = pd.DataFrame(rows, columns=columns)
        frame.insert(0, "id", ids[start:stop])
        return frame

    if importlib.util.find_spec("pyarrow") is None:
        parts = [table(*block) for block in blocks]
        whole = pd.concat(parts, ignore_index=True) if parts else table(0, 0, np.empty(
            (0, width), np.float32))
        with atomic.replacing(out) as tmp:
            whole.to_parquet(tmp, index=False)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.Schema.from_pandas(table(0, 0, np.empty((0, width), np.float32)),
                                   preserve_index=False)
    with atomic.replacing(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for block in blocks:
            writer.write_table(pa.Table.from_pandas(table(*block), schema=schema,
                                                    preserve_index=False))


WRITERS = {"npy": _write_npy, "csv": _write_csv, "parquet": _write_parquet}


def _require_parquet_engine() -> None:
    import importlib.util

    if not any(importlib.util.find_spec(m) for m in ("pyarrow", "fastparquet")):
        raise ExportError("writing parquet needs pyarrow (or fastparquet), which is not "
                          "installed: `pip install pyarrow`, or export --to npy or csv")
