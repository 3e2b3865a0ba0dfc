"""`vggfeat eval-localisation`: a thin layer over vggfeat.localisation.run_eval."""
from pathlib import Path

import click

from vggfeat.cli.checks import input_error
from vggfeat.cli.options import (
    StrictCommand,
    default_workers,
    device_option,
    quiet_option,
    root_option,
    workers_option,
)


class NetsOption(click.Option):
    """A repeatable option that also takes the plain values after it: --weights A B C.

    (click options take one value each; the paper's ensembles are lists of nets.)
    """

    def add_to_parser(self, parser, ctx):
        super().add_to_parser(parser, ctx)
        for name in self.opts:
            option = parser._long_opt.get(name) or parser._short_opt.get(name)
            if option is None:
                continue

            def process(value, state, original=option.process):
                original(value, state)
                while state.rargs and not state.rargs[0].startswith("-"):
                    original(state.rargs.pop(0), state)

            option.process = process


def _ints(ctx, param, text):
    if text is None:
        return None
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"expected positive integers, got {text!r}")
    return values


def _split_net_scales(weights) -> tuple[list[str], list[list[int] | None]]:
    """RUN@Q1,Q2 -> (RUN, [Q1, Q2]); a plain RUN -> (RUN, None)."""
    nets, net_scales = [], []
    for w in weights:
        path, _, own = str(w).rpartition("@")
        if path and own.replace(",", "").isdigit():
            nets.append(path)
            net_scales.append(_ints(None, None, own))
        else:
            nets.append(w)
            net_scales.append(None)
    return nets, net_scales


@click.command("eval-localisation", cls=StrictCommand)
@root_option("ILSVRC folder (Data/CLS-LOC, Annotations/CLS-LOC) or a CSV of boxes; its val "
             "images are evaluated.", required=True, alias=True,
             type=click.Path(exists=True, path_type=Path))
@click.option("--weights", cls=NetsOption, required=True, multiple=True,
              help="Localisation run folder or backbone; several (--weights A B): the union "
                   "of their boxes. RUN@Q1,Q2 gives one net its own scales.")
@click.option("--classifier", "classifiers", cls=NetsOption, multiple=True,
              help="Classification run(s) giving the top-5 classes and window scores "
                   "(dense protocol); several are averaged.")
@click.option("--protocol", type=click.Choice(["center", "dense"]), default="dense",
              show_default=True,
              help="center: ground-truth class, central crop (Table 8); dense: whole image, "
                   "top-5 classes, greedy merging (Table 9).")
@click.option("--scales", callback=_ints, default=None,
              help="Test scales Q, e.g. 352,384 [the first net's training S]; center uses "
                   "the first.")
@click.option("--iou", "iou_threshold", type=click.FloatRange(0, 1), default=0.5,
              show_default=True, help="IoU with a ground-truth box at which a box is correct.")
@click.option("--merge-threshold", type=click.FloatRange(0, min_open=True), default=1.0,
              show_default=True,
              help="Largest match score (centre distance / box size + 1 - IoU) at which two "
                   "boxes merge.")
@device_option()
@workers_option(4)
@click.option("--limit", type=click.IntRange(1), default=None,
              help="Evaluate N images spread over the split.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for localisation.csv and localisation.json.")
@click.option("--overwrite", is_flag=True,
              help="Replace localisation.csv/.json already in --out.")
@quiet_option()
def eval_localisation(data, weights, classifiers, protocol, scales, iou_threshold,
                      merge_threshold, device, workers, limit, out, quiet, overwrite):
    """Top-1/top-5 localisation error (paper Tables 8-9): a box counts at IoU >= 0.5.

    \b
    Examples:
        vggfeat eval-localisation --root ~/ILSVRC --weights runs/loc384 \\
            --protocol center --scales 384
        vggfeat eval-localisation --root ~/ILSVRC --weights runs/loc256 runs/loc384 \\
            --classifier runs/D runs/E --protocol dense --scales 256,384,512 --out results/
    """
    from vggfeat.data.readers import LocalisationDataError
    from vggfeat.localisation.evaluate import LocalisationEvalError, format_table
    from vggfeat.localisation.run_eval import run_eval_localisation
    from vggfeat.models import WeightsError

    weights, net_scales = _split_net_scales(weights)
    if workers is None:
        workers = default_workers(4)
    try:
        rows, bad, written = run_eval_localisation(
            data, weights, classifiers, out=out, overwrite=overwrite, device=device,
            protocol=protocol, scales=scales, workers=workers, quiet=quiet, limit=limit,
            iou_threshold=iou_threshold, merge_threshold=merge_threshold, net_scales=net_scales)
    except (WeightsError, LocalisationEvalError, LocalisationDataError, ValueError) as error:
        raise input_error(error) from None
    if bad:
        click.echo(f"skipped {len(bad)} unreadable images, e.g. {bad[:3]}", err=True)
    click.echo(format_table(rows))
    if written:
        click.echo(f"wrote {written[0]} and {written[1]}")
