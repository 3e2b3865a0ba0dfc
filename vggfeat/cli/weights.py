"""Weight-file commands: `convert-caffe` and `export-torchvision`."""
import click

from vggfeat.cli.checks import input_error


class _ArchChoice(click.Choice):
    """The architecture names, read from vggfeat.models (torch) only when first needed, so
    that listing the commands in `vggfeat --help` does not import torch."""

    def __init__(self):
        super().__init__((), case_sensitive=False)

    @property
    def choices(self):
        from vggfeat.models import ARCHS, PAPER_NAMES

        return tuple(ARCHS) + tuple(PAPER_NAMES)

    @choices.setter
    def choices(self, value):  # click.Choice.__init__ assigns; the names come from models
        pass


ARCH_CHOICE = _ArchChoice()


@click.command("convert-caffe")
@click.argument("caffemodel", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--arch", type=ARCH_CHOICE, help="Architecture, when the layer count can't say.")
def convert_caffe(caffemodel, out, arch):
    """Convert the paper's Caffe release into a vggfeat checkpoint.

    The checkpoint keeps Caffe's preprocessing (BGR, 0..255, mean pixel subtracted) and
    Caffe's max pooling (output sizes rounded up: for sides that are not multiples of 32,
    one more dense-map row or column than torch's default), so every vggfeat command
    feeds and runs the net as Caffe did.

    \b
    Example:
        vggfeat convert-caffe VGG_ILSVRC_16_layers.caffemodel vgg16-caffe.pth
    """
    from vggfeat.models import WeightsError
    from vggfeat.models.caffe import convert_caffe as convert

    try:
        model = convert(caffemodel, out, arch)
    except WeightsError as error:
        raise input_error(error) from None
    click.echo(f"wrote {out}: {model.meta['arch']}, preprocessing "
               f"{model.meta['preprocessing']['channel_order']} mean "
               f"{model.meta['preprocessing']['mean']}, pooling rounded "
               f"{model.meta['pool_rounding']} (as Caffe)")


@click.command("export-torchvision")
@click.argument("weights")
@click.argument("out", type=click.Path(dir_okay=False))
def export_torchvision(weights, out):
    """Write a vggfeat checkpoint as a state dict that torchvision's vgg builders load.

    \b
    Example:
        vggfeat export-torchvision runs/d/backbone.pth vgg16-mine.pth
    """
    from vggfeat.models import WeightsError, load_backbone
    from vggfeat.models import export_torchvision as export

    try:
        export(load_backbone(weights), out)
    except (WeightsError, ValueError) as error:
        raise input_error(error) from None
    click.echo(f"wrote {out}")
