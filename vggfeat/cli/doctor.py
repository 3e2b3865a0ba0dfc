"""`vggfeat doctor`: check the installation, weights, a dataset and a cache; say how to fix."""
import sys
from pathlib import Path

import click

from vggfeat.data.readers import DATASETS
from vggfeat.utils.errors import EXIT_FAILED  # the exit status when a check failed

MARKS = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}


def _options(ctx, param, values):
    """KEY=VALUE reader options (as `vggfeat extract --option`)."""
    from vggfeat.cli.extract import parse_options

    return parse_options(ctx, param, values)


@click.command()
@click.option("--weights", default=None,
              help="Weights file (.pth), train-backbone run folder, or torchvision name "
                   "(vgg16) to load.")
@click.option("--arch", default=None,
              help="Architecture: with --weights, checked against the file; alone, looks for "
                   "torchvision's weights of it.")
@click.option("--dataset", type=click.Choice(DATASETS), default=None, help="Dataset reader.")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="Dataset folder to check with --dataset.")
@click.option("--option", "reader_options", multiple=True, callback=_options,
              metavar="KEY=VALUE", help="Reader option, as for extract (repeatable).")
@click.option("--cache", type=click.Path(path_type=Path), default=None,
              help="Feature cache (.h5) to check, against --weights when given.")
@click.option("--device", default="auto", show_default=True,
              help="The device you will ask for: auto, cpu, cuda, cuda:1, mps.")
def doctor(weights, arch, dataset, root, reader_options, cache, device):
    """Check versions, device, weights, a dataset layout and a feature cache.

    Prints one line per check (ok, WARN or FAIL) and, for each problem, the fix. The exit
    status is 1 when a check fails, so scripts can run it before a long job.

    \b
    Example:
        vggfeat doctor
        vggfeat doctor --weights vgg16 --dataset voc2007 --root ~/data/VOCdevkit
        vggfeat doctor --weights runs/D/backbone.pth --cache voc2007-D-fc7.h5
    """
    from vggfeat.doctor import run_checks

    checks = run_checks(weights=weights, arch=arch, dataset=dataset, root=root,
                        options=reader_options, cache=cache, device=device)
    for check in checks:
        click.echo(f"[{MARKS[check.status]:>4}] {check.name}: {check.detail}")
        if check.fix:
            click.echo(f"       fix: {check.fix}")
    failed = [c.name for c in checks if c.failed]
    if failed:
        click.echo(f"{len(failed)} check(s) failed: {', '.join(failed)}", err=True)
        sys.exit(EXIT_FAILED)
    click.echo("all checks passed")
