"""`vggfeat compare`: several svm-eval result folders side by side."""
from pathlib import Path

import click

from vggfeat.cli.checks import input_error
from vggfeat.cli.options import StrictCommand


@click.command("compare", cls=StrictCommand)
@click.argument("results", nargs=-1, required=True, metavar="RESULTS_DIR...",
                type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write OUT/compare.csv and OUT/compare.png (a plot of the headline "
                   "and of every class per run).")
@click.option("--per-class/--no-per-class", default=True, show_default=True,
              help="Print each class's figure per run after the headline table.")
@click.option("--overwrite", is_flag=True, help="Replace compare.csv/compare.png in --out.")
def compare(results, out, per_class, overwrite):
    """Print (and with --out, plot) the results of several `svm-eval` runs side by side:
    probe, net, layer, training images per class, headline metric, its spread over
    splits, descriptor, and each class's figure. A folder holding a learning curve
    (svm-eval with several --train-per-class sizes or probes) stands for all its runs.

    Runs are comparable when they are on the same dataset with the same splits; a warning
    (stderr) says when they are not.

    \b
    Example:
        vggfeat compare results/c101-D results/c101-E results/c101-DE
        vggfeat compare runs/*-svm --out comparison/
        vggfeat compare c101-resnet50-layer4 c101-vgg16-fc7-curve
    """
    from vggfeat.evaluation.compare import (
        CompareError,
        comparability_warnings,
        format_comparison,
        load_runs,
        write_comparison,
    )

    try:
        runs = load_runs(results)
    except CompareError as error:
        raise input_error(error) from None
    for warning in comparability_warnings(runs):
        click.echo(warning, err=True)
    click.echo(format_comparison(runs, per_class=per_class))
    if out is None:
        return
    try:
        written = write_comparison(runs, out, overwrite=overwrite, echo=click.echo)
    except CompareError as error:  # compare.csv or compare.png already there
        raise input_error(error) from None
    for path in written:
        click.echo(path)
