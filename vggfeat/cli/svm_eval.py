"""`vggfeat svm-eval`: linear SVMs on cached descriptors, with the dataset's protocol."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import click

from vggfeat.cli.checks import input_error, require_device
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


def parse_list(kind, allowed=None):
    """A click callback for 'a,b,c' -> tuple (None when not given), each item checked."""
    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            items = tuple(kind(v) for v in value.replace(",", " ").split())
        except ValueError:
            items = ()
        if not items or any(v not in allowed if allowed else v < 1 for v in items):
            raise click.BadParameter(f"{value!r}: give " + (
                f"one or more of {', '.join(allowed)}, e.g. svm,knn" if allowed
                else "positive integers, e.g. 5 or 1,2,5,10"))
        return tuple(dict.fromkeys(items))
    return parse


def check_splits_file(ctx, param, value):
    """A splits.csv written by an earlier svm-eval: its header names split, id and subset."""
    if value is None:
        return None
    from vggfeat.utils.tables import TableEncodingError, csv_rows

    try:
        with csv_rows(value) as reader:  # a spreadsheet's byte-order mark and CRLF too
            header = reader.fieldnames or []
    except (OSError, TableEncodingError) as error:
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
@click.option("--probe", "probes", default="svm", show_default=True,
              callback=parse_list(str, ("svm", "logreg", "knn")),
              help="svm: the paper's linear SVMs; logreg: L2 logistic regression (C by the "
                   "SVM's cross-validation; multinomial for single-label data); knn: cosine "
                   "kNN, similarity-weighted vote, k from 1,5,10,20,50,100 by the same "
                   "cross-validation. Several (svm,knn): one folder each, OUT/<probe>.")
@click.option("--train-per-class", "train_sizes", default=None, callback=parse_list(int),
              help="Training images per class [Caltech: 30 / 60; folder/csv: given, "
                   "Caltech-style splits instead of 25% of each class as test]. Several "
                   "(1,2,5,10): a learning curve, each size in OUT/n<size> (OUT/<probe>/"
                   "n<size> with several probes) on the same test images, and "
                   "OUT/learning_curve.csv/.png.")
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
@click.option("--layer", default=None,
              help="Which layer of caches holding several (`vggfeat features info` lists "
                   "them) [default: each cache's first].")
@quiet_option()
def svm_eval(features, aggregate, block_l2, C, cv, solver, device, difficult, seed, n_splits,
             splits_file, probes, train_sizes, test_per_class, root, out, quiet, overwrite,
             strict, layer):
    """Train one-vs-rest linear SVMs on FEATURES (HDF5 caches from `vggfeat extract`) and
    evaluate them with the dataset's protocol.

    The dataset, its location and its reader options come from the cache. Several caches
    of the same images (e.g. Net-D and Net-E) are stacked. C is chosen on the training
    data only: per class by AP for VOC, one C for all classes of a split by mean class
    recall for Caltech and multi-class folder/csv data. Writes results.csv, summary.json,
    scores.csv and PR plots. --probe logreg or knn fits another probe the same way.

    \b
    Example:
        vggfeat svm-eval voc2007-vgg16-fc7.h5 --out results/voc07
        vggfeat svm-eval caltech101-vgg16-fc7.h5 caltech101-vgg19-fc7.h5 --C 0.1,1,10
        vggfeat svm-eval caltech101-vgg16-fc7.h5 --probe svm,knn --train-per-class 1,5,30
        vggfeat svm-eval voc2007-vgg16-conv5_3+fc7.h5 --layer conv5_3 --out results/c53
    """
    from vggfeat.utils.memory import keep_no_blas_buffers

    keep_no_blas_buffers()  # before torch is imported
    from vggfeat.data.readers import DatasetLayoutError
    from vggfeat.evaluation.inputs import EvaluationInputError
    from vggfeat.evaluation.learning_curve import run_evaluation
    from vggfeat.evaluation.protocols import C_GRID, Settings

    require_device(device)
    settings = Settings(
        C=C or C_GRID, cv=cv, solver=solver, device=device, difficult=difficult, seed=seed,
        n_splits=n_splits, train_per_class=train_sizes[0] if train_sizes else None,
        test_per_class=test_per_class, splits_file=splits_file, verbose=not quiet,
    )
    try:
        run = run_evaluation(features, settings, probes=probes, train_sizes=train_sizes,
                             out=out, aggregate=aggregate, block_l2=block_l2, root=root,
                             overwrite=overwrite, strict=strict, layer=layer, echo=click.echo)
    except (EvaluationInputError, DatasetLayoutError) as exc:
        raise input_error(exc) from None
    click.echo(f"wrote {len(run.files)} files to {run.out}")


if __name__ == "__main__":  # pragma: no cover
    svm_eval(sys.argv[1:])
