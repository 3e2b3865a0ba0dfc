"""`vggfeat datasets`: make small real datasets on disk (nothing is downloaded)."""
from pathlib import Path

import click

from vggfeat.cli.checks import input_error
from vggfeat.cli.options import StrictGroup


@click.group(cls=StrictGroup)
def datasets():
    """Write small real datasets to disk, laid out for the other commands.

    \b
    Example (the demo's task and training settings; minutes on 2 CPU cores):
        vggfeat datasets make-digits digits/ --clutter --size 64
        vggfeat train-backbone --root digits/backbone --out runs/digits \\
            --arch vgg11-bn --width 0.125 --init xavier --crop-size 64 \\
            --scale-jitter 64 80 --val-scale 64 --color-shift 0 \\
            --preprocessing torchvision --mean 0.485,0.456,0.406 \\
            --std 0.229,0.224,0.225 --batch-size 32 --lr 0.02 --epochs 20
    """


@datasets.command("make-digits")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(["transfer", "none"]), default="transfer",
              show_default=True,
              help="transfer: backbone/{train,val}/ and transfer/ folders; none: one folder.")
@click.option("--size", type=click.IntRange(8), default=32, show_default=True,
              help="Side of the written images in pixels (the source is 8x8).")
@click.option("--format", "fmt", type=click.Choice(["png", "jpeg"]), default="png",
              show_default=True, help="Image file format.")
@click.option("--backbone-digits", default="0-4", show_default=True,
              help="Digits for backbone/ (with --split transfer).")
@click.option("--transfer-digits", default="5-9", show_default=True,
              help="Digits for transfer/, never seen by the backbone (with --split transfer).")
@click.option("--digits", default="0-9", show_default=True, help="Digits (with --split none).")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.2, show_default=True, help="Share of backbone images put in val/.")
@click.option("--per-class", type=click.IntRange(1), default=None,
              help="At most N images per digit [default: all, about 180].")
@click.option("--seed", default=0, show_default=True,
              help="Decides the splits, --per-class and every --clutter canvas.")
@click.option("--clutter", is_flag=True,
              help="Each digit at a random size and place on a --size canvas with noise and "
                   "fragments of other digits (the demo's task; use --size 64).")
@click.option("--overwrite", is_flag=True, help="Replace digits written before in OUT_DIR.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing.")
def make_digits(out_dir, split, size, fmt, backbone_digits, transfer_digits, digits,
                val_fraction, per_class, seed, clutter, overwrite, quiet):
    """Write scikit-learn's 1,797 handwritten digits as upscaled image files.

    With --split transfer (the demo's layout) OUT_DIR/backbone/{train,val}/<digit>/ holds
    the backbone digits in the layout train-backbone reads, and OUT_DIR/transfer/<digit>/
    the other digits, a `--dataset folder` root for extract and svm-eval. OUT_DIR/digits.json
    records what was written.

    \b
    Example:
        vggfeat datasets make-digits digits/
        vggfeat datasets make-digits digits-all/ --split none --size 64 --format jpeg
    """
    from vggfeat.data.digits import make_digits as write_digits

    try:
        layout = write_digits(out_dir, split=split, size=size, fmt=fmt,
                              backbone_digits=backbone_digits, transfer_digits=transfer_digits,
                              digits=digits, val_fraction=val_fraction, per_class=per_class,
                              seed=seed, clutter=clutter, overwrite=overwrite)
    except ValueError as error:
        raise input_error(error) from None
    if quiet:
        return
    for folder, counts in layout.counts.items():
        where = layout.root if folder == "." else layout.root / folder
        per = ", ".join(f"{digit}: {n}" for digit, n in counts.items())
        click.echo(f"{where}: {sum(counts.values())} images ({per})")
