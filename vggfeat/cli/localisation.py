"""`vggfeat eval-localisation`: a thin layer over vggfeat.localisation.evaluate."""
import json
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
    import csv

    import torch

    from vggfeat.data.readers import LocalisationDataError
    from vggfeat.localisation.evaluate import (
        LocalisationEvalError,
        evaluate_localisation,
        format_table,
    )
    from vggfeat.models import WeightsError
    from vggfeat.utils import atomic

    outputs = [out / "localisation.csv", out / "localisation.json"] if out else []
    existing = [p for p in outputs if p.exists() or p.is_symlink()]
    if existing and not overwrite:  # before any work: never replace a file unasked
        raise atomic.ForeignFileError(
            f"{existing[0]} already exists; eval-localisation would replace it. Choose "
            "another --out, or pass --overwrite to replace it.")
    weights = list(weights)
    net_scales = []
    for i, w in enumerate(weights):
        path, _, own = str(w).rpartition("@")
        if path and own.replace(",", "").isdigit():
            weights[i], own = path, _ints(None, None, own)
        else:
            own = None
        net_scales.append(own)
    if workers is None:
        workers = default_workers(4)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        rows, bad = evaluate_localisation(data, list(weights), list(classifiers), protocol,
                                          scales, device, workers, quiet, limit,
                                          iou_threshold, merge_threshold, net_scales)
    except (WeightsError, LocalisationEvalError, LocalisationDataError, ValueError) as error:
        raise input_error(error) from None
    if bad:
        click.echo(f"skipped {len(bad)} unreadable images, e.g. {bad[:3]}", err=True)
    click.echo(format_table(rows))
    if out:
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out / "localisation.json", json.dumps(rows, indent=1) + "\n")
        with atomic.open_text(out / "localisation.csv", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({k: (",".join(map(str, v)) if isinstance(v, list) else v)
                              for k, v in r.items()} for r in rows)
        click.echo(f"wrote {out / 'localisation.csv'} and {out / 'localisation.json'}")
