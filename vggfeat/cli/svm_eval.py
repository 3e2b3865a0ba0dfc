"""`vggfeat svm-eval`: linear SVMs on cached descriptors, with the dataset's protocol."""
from __future__ import annotations

import csv
import dataclasses
import math
import sys
from pathlib import Path

import click

from vggfeat.cli.checks import InputError, input_error, require_device
from vggfeat.cli.options import StrictCommand, device_option, quiet_option


def parse_C(ctx, param, values):
    """'--C 0.1,1,10' or '--C 0.1 --C 1' -> ascending tuple; none: the default grid."""
    if not values:
        return None
    try:
        grid = sorted({float(v) for item in values for v in item.replace(",", " ").split()})
    except ValueError:
        raise click.BadParameter(f"{values!r} is not a list of numbers, e.g. 0.1,1,10") from None
    if not grid or not all(math.isfinite(c) and c > 0 for c in grid):
        raise click.BadParameter("C values must be positive finite numbers, e.g. 0.1,1,10")
    return tuple(grid)


def parse_cv(ctx, param, value):
    """An int >= 2 (folds) or a fraction in (0, 1) (held out once)."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: give a number of folds (3) or a fraction (0.2)") \
            from None
    if number.is_integer() and number >= 2:
        return int(number)
    if 0 < number < 1:
        return number
    raise click.BadParameter(f"{value!r}: give a number of folds >= 2 or a fraction in (0, 1)")


def check_splits_file(ctx, param, value):
    """A splits.csv written by an earlier svm-eval: its header names split, id and subset."""
    if value is None:
        return None
    try:
        with open(value, newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError) as error:
        raise click.BadParameter(f"{value}: cannot be read as CSV ({error})") from None
    if not {"split", "id", "subset"} <= {h.strip() for h in header}:
        raise click.BadParameter(
            f"{value} has columns {header[:6]}, not a splits file (split,id,class,subset); "
            "give the splits.csv that an earlier svm-eval wrote")
    return value


@click.command("svm-eval", cls=StrictCommand)
@click.argument("features", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--aggregate", type=click.Choice(["avg", "stack"]), default=None,
              help="Combine scales by averaging or stacking [default: the dataset's: avg for "
                   "VOC, stack for Caltech].")
@click.option("--block-l2", is_flag=True, help="L2-normalise each cache's block before stacking.")
@click.option("--C", "C", multiple=True, callback=parse_C,
              help="C value(s), e.g. 0.1,1,10 [default: 0.01,0.1,1,10,100]; one value: no "
                   "selection.")
@click.option("--cv", callback=parse_cv, default=None,
              help="Folds (e.g. 3) or held-out fraction (e.g. 0.2) of the training data for "
                   "choosing C [default: VOC 3 folds, C per class; Caltech/custom "
                   "multi-class 5 stratified folds, one C for all classes by mean class "
                   "recall].")
@click.option("--solver", type=click.Choice(["torch", "liblinear"]), default="torch",
              show_default=True, help="torch: batched Newton solver; liblinear: LinearSVC.")
@device_option("Where the torch solver runs")
@click.option("--difficult", type=click.Choice(["ignore", "positive"]), default="ignore",
              show_default=True, help="VOC difficult images in training (never scored).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random splits and of the cross-validation folds.")
@click.option("--splits", "n_splits", type=click.IntRange(1), default=3, show_default=True,
              help="Number of random splits (Caltech and custom data without a split).")
@click.option("--splits-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, callback=check_splits_file,
              help="Reuse the splits.csv of an earlier run.")
@click.option("--train-per-class", type=click.IntRange(1), default=None,
              help="Training images per class [Caltech: 30 / 60; folder/csv: given, "
                   "Caltech-style splits instead of 25% of each class as test].")
@click.option("--test-per-class", type=click.IntRange(1), default=None,
              help="Test images per class with --train-per-class [Caltech: 50 / the rest].")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="The dataset's location, if it moved since the extraction.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder [default: <first cache's name>-svm].")
@click.option("--overwrite", is_flag=True,
              help="Replace the results in an --out folder made with other options.")
@click.option("--strict", is_flag=True,
              help="Refuse caches with images that have no descriptor [default: leave them "
                   "out of training and scoring, and say which].")
@quiet_option()
def svm_eval(features, aggregate, block_l2, C, cv, solver, device, difficult, seed, n_splits,
             splits_file, train_per_class, test_per_class, root, out, quiet, overwrite,
             strict):
    """Train one-vs-rest linear SVMs on FEATURES (HDF5 caches from `vggfeat extract`) and
    evaluate them with the dataset's protocol.

    The dataset, its location and its reader options come from the cache. Several caches
    of the same images (e.g. Net-D and Net-E) are stacked. C is chosen on the training
    data only: per class by AP for VOC, one C for all classes of a split by mean class
    recall for Caltech and multi-class folder/csv data. Writes results.csv, summary.json,
    scores.csv and PR plots.

    \b
    Example:
        vggfeat svm-eval voc2007-vgg16-fc7.h5 --out results/voc07
        vggfeat svm-eval caltech101-vgg16-fc7.h5 caltech101-vgg19-fc7.h5 --C 0.1,1,10
    """
    from vggfeat import diagnostics
    from vggfeat.data.readers import DatasetLayoutError
    from vggfeat.evaluation import inputs, protocols, report
    from vggfeat.features.cache import evaluation_problem
    from vggfeat.utils import atomic

    require_device(device)
    settings = protocols.Settings(
        C=C or protocols.C_GRID, cv=cv, solver=solver, device=_device(device),
        difficult=difficult, seed=seed, n_splits=n_splits, train_per_class=train_per_class,
        test_per_class=test_per_class, splits_file=splits_file, verbose=not quiet,
    )
    out = out or Path(f"{features[0].stem}-svm")
    problems = [evaluation_problem(p) for p in features]
    if any(problems):  # unfinished, or written by the API without labels
        raise InputError(next(p for p in problems if p))
    try:
        infos = [inputs.read_cache_info(p) for p in features]
        inputs.check_same_dataset(infos)
        reader = _open_reader(infos[0], root, inputs)
        aggregate = aggregate or reader.default_aggregate
        recorded = {**dataclasses.asdict(settings), "aggregate": aggregate,
                    "block_l2": block_l2, "root": str(reader.root)}
        sources = [{"path": str(i.path), "arch": i.arch, "layer": i.layer,
                    "scales": list(i.scales)} for i in infos]
        if not overwrite:  # as extract does: another configuration never replaces results
            _check_out(out, recorded, sources)
            _check_foreign(out, report)
        atomic.remove_stale_tmp(out, report.OUTPUT_PATTERNS)  # of a killed earlier run
        _warn_low_variation(features)
        infos, feats = inputs.load(features, aggregate, block_l2=block_l2)
        reader, left_out = inputs.leave_out_missing(reader, feats, strict=strict)
        if left_out:
            click.echo(left_out.message(), err=True)
        made_folder = not out.exists()
        report.claim_outputs(out)  # files written from here on are known as ours
        try:
            result = protocols.run_protocol(reader, feats, settings, out)
        except BaseException:
            report.unclaim_if_unused(out, made_folder)  # a refused run leaves no trace
            raise
    except (inputs.EvaluationInputError, DatasetLayoutError) as exc:
        raise input_error(exc) from None
    for warning in (diagnostics.grid_edge_warning(result.chosen_C, settings.C),
                    diagnostics.chance_warning(result.headline, result.rows,
                                               len(result.classes))):
        if warning:
            click.echo(warning, err=True)
    paper = report.paper_figure(result, [i.arch for i in infos], [i.layer for i in infos])
    click.echo(report.format_table(result, paper))
    files = report.write_report(result, out, recorded, sources, paper)
    if left_out:
        _record_left_out(files["summary"], left_out.record())
    report.release_outputs(out)
    written = sorted(str(p) for p in list(files.values()) + result.files)
    click.echo(f"wrote {len(written)} files to {out}")


def _record_left_out(summary_path: Path, record: dict) -> None:
    """Add the images left out to summary.json (kept out of "settings", which a rerun
    compares with its own)."""
    import json

    from vggfeat.utils import atomic

    summary = json.loads(summary_path.read_text())
    summary["left_out"] = record
    atomic.write_text(summary_path, json.dumps(summary, indent=2) + "\n")


def _open_reader(info, root, inputs):
    """The cache's stored labels (written by the Python API), else its dataset's reader."""
    from vggfeat.data.readers import LabelTableReader
    from vggfeat.features.cache import read_labels

    stored = read_labels(info.path)
    if stored is None:
        return inputs.open_reader(info, root)
    ids, classes, y, splits = stored
    return LabelTableReader(info.dataset, root or info.root, ids, classes, y, splits)


# Settings that do not change the results: a rerun that differs only in these may reuse --out.
NOT_COMPARED = ("verbose", "device")


def _check_out(out: Path, recorded: dict, sources: list[dict]) -> None:
    """Refuse an --out folder whose summary.json records other settings or inputs."""
    import json

    from vggfeat.evaluation.report import _jsonable

    summary = out / "summary.json"
    if not summary.is_file():
        return
    try:
        old = json.loads(summary.read_text())
    except (OSError, ValueError):
        return
    new = json.loads(json.dumps({"settings": recorded, "inputs": sources}, default=_jsonable))
    before, after = old.get("settings") or {}, new["settings"]
    keys = sorted(k for k in set(before) | set(after)
                  if k not in NOT_COMPARED and before.get(k) != after.get(k))
    diffs = [f"{k}: folder has {before.get(k)!r}, this run {after.get(k)!r}" for k in keys]
    if old.get("inputs") != new["inputs"]:
        diffs.append("the input caches differ")
    if diffs:
        raise InputError(
            f"{out} holds results made with other options ({'; '.join(diffs[:4])}); use "
            "another --out, or --overwrite to replace them")


def _check_foreign(out: Path, report) -> None:
    """Refuse to replace output files in --out that vggfeat did not write (exit 2)."""
    from vggfeat.utils.atomic import ForeignFileError

    foreign = report.foreign_outputs(out)
    if foreign:
        names = ", ".join(p.name for p in foreign[:4]) + (" ..." if len(foreign) > 4 else "")
        raise ForeignFileError(
            f"--out {out} holds {names}, which svm-eval would replace and vggfeat did not "
            "write (no vggfeat summary.json lists them). Choose another --out, or pass "
            "--overwrite to replace them (e.g. the files of an interrupted svm-eval).")


def _warn_low_variation(paths) -> None:
    from vggfeat.features.cache import low_variation_warning, read_variation

    for path in paths:
        warning = low_variation_warning(path, read_variation(path))
        if warning:
            click.echo(warning, err=True)


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":  # pragma: no cover
    svm_eval(sys.argv[1:])
