"""`vggfeat eval-backbone`: a thin layer over vggfeat.training.eval_run."""
from pathlib import Path

import click

from vggfeat.cli.checks import input_error, require_device
from vggfeat.cli.options import (
    StrictCommand,
    default_workers,
    device_option,
    quiet_option,
    root_option,
)


def _ints(ctx, param, text):
    if text is None:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


@click.command("eval-backbone", cls=StrictCommand)
@root_option("Validation folder VAL_DIR/<class>/* (or DIR holding val/).", required=True,
             alias=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--weights", required=True, multiple=True,
              help="Backbone file or run folder; several (--weights A B) for an ensemble.")
@click.option("--scales", callback=_ints, default=None,
              help="Test scales Q, e.g. 256,384,512 [the paper's for the net's training S].")
@click.option("--method", type=click.Choice(["dense", "multicrop", "both"]), default="both",
              show_default=True, help="Dense, 50-crop multi-crop, or both and their average.")
@device_option("Where the nets run")
@click.option("--workers", type=click.IntRange(0), default=None,
              help="Decoding processes [default: min(4, CPU cores - 1), here "
                   f"{default_workers(4)}].")
@click.option("--limit", type=click.IntRange(1), default=None,
              help="Evaluate on N images spread over classes.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the rows as JSON.")
@quiet_option()
@click.argument("more_weights", nargs=-1, metavar="")
def eval_backbone(data, weights, scales, method, device, workers, limit, json_out, quiet,
                  more_weights):
    """Top-1/top-5 error by dense, multi-crop and combined evaluation (paper Tables 3-6).

    \b
    Example:
        vggfeat eval-backbone --root ~/imagenet/val --weights runs/D runs/E \\
            --scales 256,384,512 --method both
    """
    from vggfeat.models import WeightsError
    from vggfeat.training.eval_run import run_eval_backbone
    from vggfeat.training.evaluate import EvaluationError, format_table

    workers = default_workers(4) if workers is None else workers
    weights = [*weights, *more_weights]  # `--weights A B` reads B as a trailing argument
    require_device(device)
    try:
        rows, bad = run_eval_backbone(data, weights, scales=scales, method=method, device=device,
                                      workers=workers, quiet=quiet, limit=limit,
                                      json_out=json_out)
    except (WeightsError, EvaluationError, ValueError) as error:
        raise input_error(error) from None
    if bad:
        click.echo(f"skipped {len(bad)} unreadable images, e.g. {bad[:3]}", err=True)
    click.echo(format_table(rows))
    if json_out:
        click.echo(json_out)
