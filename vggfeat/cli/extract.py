"""`vggfeat extract`: every image a dataset's protocol needs -> one HDF5 feature cache."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from vggfeat.cli.checks import input_error
from vggfeat.cli.options import (
    StrictCommand,
    cpu_count,
    default_workers,
    device_option,
    quiet_option,
    root_option,
)
from vggfeat.data.readers import DATASETS
from vggfeat.utils.errors import EXIT_BAD_IMAGES

# Exit status when some images could not be read (and --skip-bad was not given).


def parse_scales(ctx, param, value):
    """'256,384,512' or '256 384 512' -> (256, 384, 512); None keeps the dataset's default."""
    if value is None:
        return None
    try:
        scales = tuple(int(v) for v in value.replace(",", " ").split())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a list of integers, e.g. 256,384,512") \
            from None
    if not scales or min(scales) <= 0:
        raise click.BadParameter(f"{value!r}: give positive image sides, e.g. 256,384,512")
    return scales


def parse_options(ctx, param, values):
    """KEY=VALUE pairs -> dict (true/false become booleans)."""
    options = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE, e.g. drop_background=true")
        low = value.lower()
        options[key] = {"true": True, "false": False}.get(low, value)
    return options


def default_out(dataset: str, weights: str, layer: str | None) -> Path:
    """<dataset>-<weights>-<layer>.h5 (layers joined by "+"; fc7 when none is given); a
    training run's weights (RUN_DIR or its backbone.pth, the same name in every run) are
    named by the run folder."""
    layer = "+".join(name.strip() for name in (layer or "fc7").split(","))
    path = Path(str(weights)).expanduser()
    if path.is_dir() or path.name == "backbone.pth":
        stem = (path if path.is_dir() else path.resolve().parent).resolve().name
    else:
        stem = path.stem or str(weights)
    return Path(f"{dataset}-{stem}-{layer}.h5")


@click.command(cls=StrictCommand)
@click.option("--dataset", required=True, type=click.Choice(DATASETS),
              help="Dataset reader (folder: ROOT/<class>/*; csv: see below).")
@root_option("Dataset folder (for --dataset csv: the CSV file, or a folder holding labels.csv).",
             required=True, type=click.Path(path_type=Path))
@click.option("--weights", required=True,
              help="Weights file (.pth), train-backbone run folder, or torchvision name, "
                   "e.g. vgg16, resnet50 or resnet50-11ad3fa6.pth (from torch hub's folder).")
@click.option("--arch", default=None,
              help="Architecture, when the weights cannot say: a VGG or a torchvision CNN "
                   "(resnet50, convnext_tiny, efficientnet_b0, ...; `vggfeat info` lists them).")
@click.option("--download", is_flag=True,
              help="Fetch a named torchvision release into torch hub's folder if missing "
                   "(hash-checked) [default: never download].")
@click.option("--scales", callback=parse_scales, default=None,
              help="Smallest image side(s) Q, e.g. 256,384,512 [default: the dataset's].")
@click.option("--layer", default=None,
              help="Layer(s) to pool, e.g. fc7, conv5_3, or conv5_3,fc7 (one pass, one file "
                   "holding each); VGG: conv1_1..conv5_3 (Table 1's names), pool5, fc6, fc7 "
                   "(after ReLU), fc8; other nets: torchvision module names (layer4, "
                   "features.6) [default: the net's: fc7 for VGG, else the map its "
                   "classifier pools].")
@click.option("--pool", type=click.Choice(["avg", "max"]), default="avg", show_default=True,
              help="Pool each map over positions by its mean (the paper's) or maximum.")
@click.option("--flip/--no-flip", default=True, show_default=True,
              help="Average with the horizontally flipped image.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True,
              help="Most images per batch (batches hold one image shape).")
@click.option("--max-pixels", type=click.IntRange(1), default=None,
              help="Most pixels per batch, flips counted [default: 4194304].")
@click.option("--workers", type=click.IntRange(0), default=None,
              help="Decoding processes (0: in the main process) [default: 0 on the CPU, where "
                   "they would compete with the net for the cores; on a GPU min(8, cores - 1), "
                   f"here {default_workers(8)} of {cpu_count()} cores].")
@device_option("Where the net runs")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32",
              show_default=True, help="bf16: the net in bf16 (CPUs with AVX512_BF16/AMX: a "
              "packed bf16 path; elsewhere autocast); a separate cache.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True, help="Storage type of the descriptors.")
@click.option("--option", "reader_options", multiple=True, callback=parse_options,
              metavar="KEY=VALUE", help="Reader option, e.g. drop_background=true (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output file [default: <dataset>-<weights>-<layer>.h5, <weights> being "
                   "the file's stem or, for RUN_DIR/backbone.pth, the run folder's name].")
@click.option("--overwrite", is_flag=True,
              help="Replace an --out made with another configuration, or that is not a vggfeat "
                   "cache (kept until the new file is complete; never the --weights file).")
@click.option("--skip-bad", is_flag=True, help="Exit 0 even if some images cannot be read.")
@click.option("--redo-damaged", is_flag=True,
              help="Recompute in place the rows of --out that fail their checksums (`features "
                   "info --verify` lists them), keeping every other row.")
@quiet_option()
def extract(dataset, root, weights, arch, download, scales, layer, pool, flip, batch_size,
            max_pixels, workers, device, precision, dtype, reader_options, out, overwrite,
            skip_bad, redo_damaged, quiet):
    """Compute the paper's descriptors of a dataset into one resumable HDF5 file.

    Every image the dataset's protocol needs (VOC 2007: trainval and test; voc2012-action:
    images and person boxes) is rescaled to each scale, run densely through the net, pooled
    and flip-averaged. Rerunning resumes; bad images are listed and recorded in `failed`
    (exit status 3 unless --skip-bad). Under `torchrun --nproc-per-node N -m vggfeat extract`
    the processes share the work and write the same file.

    \b
    Example:
        vggfeat extract --dataset voc2007 --root ~/data/VOCdevkit --weights vgg16
        vggfeat extract --dataset folder --root photos/ --weights vgg19 --scales 256,384,512
        vggfeat extract --dataset csv --root photos/labels.csv --weights vgg16
        vggfeat extract --dataset folder --root photos/ --arch resnet50 --weights resnet50
        vggfeat extract --dataset folder --root photos/ --weights vgg16 --layer conv5_3,fc7
        vggfeat extract --dataset folder --root photos/ --weights vgg16 --redo-damaged

    \b
    --dataset csv reads a CSV file with a header row:
        path,label[,split]
        cats/1.jpg,cat,train
        both/7.jpg,cat;dog,test
    path: relative to the CSV's folder, or absolute. label: one class, or several
    separated by ';' (or one row per label) for multi-label data. split (optional):
    train, val or test (val joins training); without it svm-eval draws seeded splits.
    """
    from vggfeat.utils.hashing import start_sha256

    # The cache records the weights' sha256: hash now, on the core that idles while torch
    # is imported below, instead of beside the first batch (a run folder or a torchvision
    # name is hashed when loaded).
    start_sha256(weights)
    from vggfeat.data.readers import DatasetLayoutError, open_dataset
    from vggfeat.features.cache import CacheError
    from vggfeat.features.engine import DEFAULT_MAX_PIXELS
    from vggfeat.features.pipeline import extract_to_cache
    from vggfeat.models import WeightsError

    try:
        reader = open_dataset(dataset, root, **reader_options)
        images, boxes = reader.images(), reader.boxes()
    except (DatasetLayoutError, ValueError) as error:
        raise input_error(error) from None
    from vggfeat.models.families import default_layer

    out = out or default_out(dataset, weights, layer or default_layer(arch or Path(weights).name))
    from vggfeat.cli.checks import bf16_note, require_device

    require_device(device)  # cuda without a GPU, cuda:7, mps: refused before any work
    if not quiet:
        bf16_note(precision, device, len(images))
    if workers is None:  # decoding processes only pay off when the net is not on the CPU
        from vggfeat.utils.devices import resolve_device

        try:
            on_cpu = resolve_device(device).type == "cpu"
        except (RuntimeError, ValueError) as error:
            raise click.BadParameter(str(error), param_hint="--device") from None
        workers = 0 if on_cpu else default_workers(8)
    try:
        summary = extract_to_cache(
            images, out, weights=weights, arch=arch, download=download,
            scales=scales or reader.default_scales, layer=layer, pool=pool, flip=flip,
            boxes=boxes, batch_size=batch_size,
            max_pixels=max_pixels or DEFAULT_MAX_PIXELS, workers=workers, device=device,
            precision=precision, dtype=dtype, overwrite=overwrite, dataset=dataset,
            root=reader.root, reader_options=reader.options, progress=not quiet, cli=True,
            redo_damaged=redo_damaged,
            log=lambda message: click.echo(message, err=True))
    except (WeightsError, CacheError, ValueError) as error:
        raise input_error(error) from None
    from vggfeat.utils import distributed

    if distributed.rank() == 0:  # bad images are warnings (stderr); the file is the result
        *bad, totals = summary.lines()
        for line in bad:
            click.echo(line, err=True)
        click.echo(totals)
    distributed.shutdown()
    if summary.failed and not skip_bad:
        sys.exit(EXIT_BAD_IMAGES)
