"""Weight-file commands: `convert-caffe` and `export-torchvision`."""
import click

from vggfeat.models import ARCHS, PAPER_NAMES, WeightsError

ARCH_CHOICE = click.Choice(list(ARCHS) + list(PAPER_NAMES), case_sensitive=False)


@click.command("convert-caffe")
@click.argument("caffemodel", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--arch", type=ARCH_CHOICE, help="Architecture, when the layer count can't say.")
def convert_caffe(caffemodel, out, arch):
    """Convert the paper's Caffe release into a vggfeat checkpoint.

    The checkpoint keeps Caffe's preprocessing (BGR, 0..255, mean pixel subtracted),
    so every vggfeat command feeds the net what it was trained on.

    \b
    Example:
        vggfeat convert-caffe VGG_ILSVRC_16_layers.caffemodel vgg16-caffe.pth
    """
    from vggfeat.models.caffe import convert_caffe as convert

    try:
        model = convert(caffemodel, out, arch)
    except WeightsError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"wrote {out}: {model.meta['arch']}, preprocessing "
               f"{model.meta['preprocessing']['channel_order']} mean "
               f"{model.meta['preprocessing']['mean']}")


@click.command("export-torchvision")
@click.argument("weights")
@click.argument("out", type=click.Path(dir_okay=False))
def export_torchvision(weights, out):
    """Write a vggfeat checkpoint as a state dict that torchvision's vgg builders load.

    \b
    Example:
        vggfeat export-torchvision runs/d/backbone.pth vgg16-mine.pth
    """
    from vggfeat.models import export_torchvision as export
    from vggfeat.models import load_backbone

    try:
        export(load_backbone(weights), out)
    except (WeightsError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"wrote {out}")
