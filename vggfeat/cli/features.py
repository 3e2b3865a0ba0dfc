"""`vggfeat features info|export`: look inside a feature cache and get its descriptors out."""
import json
from pathlib import Path

import click

from vggfeat.cli.checks import input_error
from vggfeat.cli.options import StrictGroup


@click.group(cls=StrictGroup)
def features():
    """Look inside a feature cache (`vggfeat extract`'s HDF5 file) and export it.

    \b
    Example:
        vggfeat features info voc2007-vgg16-fc7.h5
        vggfeat features export voc2007-vgg16-fc7.h5 --to npy
    """


@features.command("info")
@click.argument("cache_file", metavar="FILE", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
@click.option("--verify", is_flag=True,
              help="Also read every row and check it against its checksum: OK, or the "
                   "damaged rows by id (exit status 2) and the fix.")
def info(cache_file, as_json, verify):
    """Describe FILE: dataset, net, layer(s), scales, rows done/failed, dimension, and how much
    the descriptors vary across images (a net that learnt nothing gives the same one).

    FILE may be an unfinished extraction (FILE.partial is read when FILE is absent).

    \b
    Example:
        vggfeat features info caltech101-vgg16-fc7.h5
        vggfeat features info caltech101-vgg16-fc7.h5 --verify
    """
    from vggfeat.features.export import ExportError, cache_summary, format_summary, verify_cache

    try:
        summary = cache_summary(cache_file)
        checked = verify_cache(cache_file) if verify else None
    except ExportError as error:
        raise input_error(error) from None
    if checked is not None:
        summary["verify"] = {"ok": checked.ok, "checksums": checked.has_checksums,
                             "rows": checked.checked, "damaged": checked.damaged}
    click.echo(json.dumps(summary, indent=1) if as_json else format_summary(summary))
    if checked is not None and not as_json:
        click.echo(checked.line(), err=bool(checked.has_checksums and not checked.ok))
    if checked is not None and checked.has_checksums and not checked.ok:
        raise SystemExit(2)


@features.command("export")
@click.argument("cache_file", metavar="FILE", type=click.Path(path_type=Path))
@click.option("--to", "fmt", type=click.Choice(["npy", "csv", "parquet"]), required=True,
              help="npy: a float32 (n, D) array, its row ids in NAME.ids.txt beside it; "
                   "csv/parquet: an id column then f0..f{D-1} (parquet needs pyarrow).")
@click.option("--aggregate", type=click.Choice(["avg", "stack"]), default=None,
              help="Combine scales by averaging or stacking [default: the dataset's, as "
                   "svm-eval: stack for Caltech, avg otherwise].")
@click.option("--l2/--no-l2", default=True, show_default=True,
              help="L2-normalise each row (svm-eval's input) or keep the raw values.")
@click.option("--boxes", is_flag=True,
              help="The person-box descriptors of a voc2012-action cache.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file [default: <FILE without .h5>-<aggregate>.<format>].")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--layer", default=None,
              help="Which layer of a cache holding several (`features info` lists them) "
                   "[default: its first].")
def export(cache_file, fmt, aggregate, l2, boxes, out, overwrite, layer):
    """Write FILE's descriptors as one row per image (its id first), aggregated over scales
    and L2-normalised as svm-eval reads them, for use in other tools.

    \b
    Example:
        vggfeat features export caltech101-vgg16-fc7.h5 --to npy
        vggfeat features export photos-vgg16-fc7.h5 --to csv --aggregate avg --out feats.csv
        vggfeat features export photos-vgg16-conv5_3+fc7.h5 --to npy --layer conv5_3
    """
    from vggfeat.features.export import (
        ExportError,
        cache_summary,
        default_aggregate,
        default_export_path,
        export_features,
    )

    try:
        summary = cache_summary(cache_file, compute_variation=False)
        aggregate = aggregate or default_aggregate(summary["dataset"])
        out = out or default_export_path(cache_file, fmt, aggregate, layer)
        written = export_features(cache_file, out, fmt, aggregate=aggregate, l2=l2,
                                  boxes=boxes, overwrite=overwrite, layer=layer)
    except ExportError as error:
        raise input_error(error) from None
    if not summary["complete"]:
        images = summary["groups"]["images"]
        click.echo(f"warning: {summary['path']} is unfinished: exported the {images['done']} "
                   f"of {images['rows']} rows done so far", err=True)
    for path in written:
        click.echo(path)
