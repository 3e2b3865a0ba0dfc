"""`vggfeat train-backbone`: a thin layer over vggfeat.training (and vggfeat.localisation).

Every default is the library's (`vggfeat.training.config.DEFAULTS`, and
`vggfeat.localisation.config.LOC_DEFAULTS` for --task localisation): one source of truth.
"""
from pathlib import Path

import click

from vggfeat.cli.checks import (
    CropSize,
    FiniteFloat,
    Width,
    input_error,
    require_device,
    three_numbers,
)
from vggfeat.cli.options import (
    StrictCommand,
    default_workers,
    device_option,
    quiet_option,
    root_option,
)
from vggfeat.localisation.config import BOX_HEADS, FINETUNE, LOC_DEFAULTS
from vggfeat.training.config import DEFAULTS, INITS, PRECISIONS


def _rgb(ctx, param, value):
    """--mean/--std: checked by `three_numbers`, then as numbers (the words pass as they are)."""
    value = three_numbers(ctx, param, value)
    if value is None or value in ("sample", "imagenet"):
        return value
    return [float(v) for v in value.split(",")]


@click.command("train-backbone", cls=StrictCommand)
@root_option("DIR with train/<class>/* and val/<class>/* (ImageNet layout); with --task "
             "localisation an ILSVRC CLS-LOC folder or a CSV of boxes.", alias=True,
             type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="RUN_DIR for checkpoint.pth, log.jsonl, config.json and backbone.pth.")
@click.option("--arch", default=DEFAULTS["arch"], show_default=True,
              help="vgg11..vgg19 (+ -bn), vgg11-lrn, vgg16-1x1, or a paper letter A..E.")
@click.option("--width", type=Width(), default=DEFAULTS["width"], show_default=True,
              help="Channel multiplier (at least 1/64).")
@click.option("--crop-size", type=CropSize(), default=DEFAULTS["crop_size"], show_default=True,
              help="Training crop side (a multiple of 32).")
@click.option("--init", type=click.Choice(INITS), default=DEFAULTS["init"],
              show_default=True, help="Random init: normal (std 0.01) or Glorot.")
@click.option("--init-from", type=click.Path(exists=True, path_type=Path),
              help="Net A run folder or backbone: copy its first 4 convs and 3 FC layers.")
@click.option("--finetune-from", type=click.Path(exists=True, path_type=Path),
              help="Run folder or backbone of the same configuration to start from.")
@click.option("--task", type=click.Choice(["classification", "localisation"]),
              default="classification", show_default=True,
              help="localisation: fine-tune the --finetune-from classification net into a box "
                   "regressor (paper Appendix A; vggfeat.localisation.train).")
@click.option("--box-head", type=click.Choice(BOX_HEADS), default=LOC_DEFAULTS["box_head"],
              show_default=True,
              help="Localisation: one box (single-class) or one per class (per-class).")
@click.option("--finetune", type=click.Choice(FINETUNE), default=LOC_DEFAULTS["finetune"],
              show_default=True,
              help="Localisation: train fc6-fc8 only, or all layers.")
@click.option("--dropout", type=FiniteFloat(0, 1, max_open=True), default=DEFAULTS["dropout"],
              show_default=True,
              help="Dropout after fc6 and fc7.")
@click.option("--pool-rounding", type=click.Choice(["floor", "ceil"]),
              default=DEFAULTS["pool_rounding"],
              help="Max-pool output sizes rounded down (torch) or up (Caffe, the paper's "
                   "released nets); recorded in the backbone and used by dense evaluation "
                   "[floor, or the --init-from/--finetune-from net's].")
@click.option("--epochs", type=click.IntRange(0), default=DEFAULTS["epochs"], show_default=True,
              help="Most epochs (the paper's recipe stops after 74).")
@click.option("--batch-size", type=click.IntRange(1), default=DEFAULTS["batch_size"],
              show_default=True,
              help="Global batch, split evenly over torchrun processes.")
@click.option("--lr", type=FiniteFloat(0, min_open=True), default=None,
              help=f"Initial learning rate [{DEFAULTS['lr']:g}; {LOC_DEFAULTS['lr']:g} with --task "
                   "localisation].")
@click.option("--momentum", type=FiniteFloat(0, 1, max_open=True), default=DEFAULTS["momentum"],
              show_default=True,
              help="SGD momentum.")
@click.option("--weight-decay", type=FiniteFloat(0), default=DEFAULTS["weight_decay"],
              show_default=True,
              help="L2 weight decay.")
@click.option("--lr-patience", type=click.IntRange(1), default=DEFAULTS["lr_patience"],
              show_default=True,
              help="Epochs without val top-1 improvement before lr /= 10.")
@click.option("--lr-drops", type=click.IntRange(0), default=DEFAULTS["lr_drops"], show_default=True,
              help="Most lr divisions.")
@click.option("--scale", type=click.IntRange(1), default=DEFAULTS["scale"],
              help="Fixed training scale S [default: crop size x 8/7, i.e. 256 for 224].")
@click.option("--scale-jitter", nargs=2, type=click.IntRange(1),
              default=DEFAULTS["scale_jitter"],
              help="S_MIN S_MAX: random S per image (e.g. 256 512); overrides --scale.")
@click.option("--val-scale", type=click.IntRange(1), default=DEFAULTS["val_scale"],
              help="Q of the single-crop validation [S, or the middle of the jitter range].")
@click.option("--no-flip", is_flag=True, help="Disable random horizontal flips.")
@click.option("--color-shift", type=FiniteFloat(0), default=DEFAULTS["color_shift"],
              show_default=True,
              help="Std of AlexNet's PCA colour shift; 0 disables it.")
@click.option("--preprocessing", type=click.Choice(["paper", "torchvision"]),
              default=DEFAULTS["preprocessing"],
              help="Input normalisation, stored in the backbone. paper: RGB in 0..255 minus "
                   "the mean RGB, no division; torchvision: RGB in [0, 1] minus ImageNet's "
                   "mean, divided by its std [paper; with --init-from/--finetune-from and "
                   "no --mean/--std: that net's].")
@click.option("--mean", default=DEFAULTS["mean"], callback=_rgb,
              help="sample (mean RGB of --mean-sample training images), imagenet, or R,G,B "
                   "on the --preprocessing scale [paper: sample; torchvision: imagenet].")
@click.option("--std", default=DEFAULTS["std"], callback=_rgb,
              help="R,G,B divisors [paper: 1,1,1; torchvision: ImageNet's].")
@click.option("--mean-sample", type=click.IntRange(1), default=DEFAULTS["mean_sample"],
              show_default=True,
              help="Training images the sampled mean RGB is computed from.")
@click.option("--seed", default=DEFAULTS["seed"], show_default=True,
              help="Seed of the initialisation, augmentation and data order.")
@device_option("Where the net trains")
@click.option("--workers", type=click.IntRange(0), default=None,
              help="Decoding processes per torchrun process [default: "
                   f"min({DEFAULTS['workers']}, its share of the CPU cores - 1), here "
                   f"{default_workers(DEFAULTS['workers'])}].")
@click.option("--precision", type=click.Choice(PRECISIONS), default=DEFAULTS["precision"],
              show_default=True, help="bf16/fp16: mixed precision under autocast.")
@click.option("--channels-last", is_flag=True, help="NHWC memory format (faster on GPUs).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option("--synthetic", is_flag=True, help="Random fixed images instead of --root.")
@click.option("--synthetic-size", type=click.IntRange(1), default=DEFAULTS["synthetic_size"],
              show_default=True,
              help="Images per epoch with --synthetic.")
@click.option("--num-classes", type=click.IntRange(2), default=DEFAULTS["num_classes"],
              show_default=True,
              help="With --synthetic only.")
@click.option("--max-bad-fraction", type=FiniteFloat(0, 1), default=DEFAULTS["max_bad_fraction"],
              show_default=True,
              help="Abort when a larger share of images cannot be decoded.")
@click.option("--max-steps", type=click.IntRange(1), default=DEFAULTS["max_steps"],
              help="Stop each epoch after N steps.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@click.option("--force-resume", is_flag=True,
              help="Resume even if architecture or dataset changed.")
@click.option("--tensorboard", is_flag=True, help="Also log to RUN_DIR/tensorboard.")
@quiet_option("No progress bars or per-epoch lines (the backbone's path is still printed).")
def train_backbone(**opts):
    """Train a VGG backbone with the paper's recipe (one process, or many under torchrun).

    \b
    Examples:
        vggfeat train-backbone --root ~/imagenet --arch A --out runs/A
        vggfeat train-backbone --root ~/imagenet --arch D --init-from runs/A --out runs/D
        torchrun --nproc-per-node 8 -m vggfeat train-backbone --root ~/imagenet \\
            --arch E --init-from runs/A --precision bf16 --channels-last --out runs/E
    """
    from vggfeat.training import CheckpointError, TrainingDataError, TrainingError, train

    resume, force = opts.pop("resume"), opts.pop("force_resume")
    opts["compile"] = opts.pop("compile_")
    opts["flip"] = not opts.pop("no_flip")
    if opts["workers"] is None:
        opts["workers"] = default_workers(DEFAULTS["workers"])
    opts["scale_jitter"] = list(opts["scale_jitter"]) if opts["scale_jitter"] else None
    if not opts["synthetic"] and opts["data"] is None:
        raise click.UsageError("give --root DIR (with train/ and val/) or --synthetic.")
    if opts["scale_jitter"] and opts["scale_jitter"][0] > opts["scale_jitter"][1]:
        raise click.BadParameter("S_MIN is larger than S_MAX, e.g. give 256 512",
                                 param_hint="--scale-jitter")
    require_device(opts["device"])
    task, box_head, finetune = opts.pop("task"), opts.pop("box_head"), opts.pop("finetune")
    if opts["lr"] is None:
        opts.pop("lr")  # the task's default
    if task == "localisation":
        from vggfeat.localisation.train import train_localisation as train

        opts.update(box_head=box_head, finetune=finetune)
    try:
        result = train(resume=resume, force_resume=force, **opts)
    except (TrainingError, TrainingDataError, CheckpointError, ValueError) as error:
        raise input_error(error) from None
    if result.get("epoch"):  # the result: on stdout, even with --quiet
        click.echo(f"backbone: {result['backbone']}")
