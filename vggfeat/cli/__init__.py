"""The `vggfeat` command line: one click group, each command a thin layer over the library.

Commands are imported lazily (name -> "module:function") so that `vggfeat --help` and
`vggfeat info` start fast and one command's heavy imports never slow down another.
"""
import importlib

import click

from vggfeat.version import __version__

# Each entry: command name -> "module:attribute" of a click.Command.
COMMANDS = {
    "info": "vggfeat.cli.info:info",
    "convert-caffe": "vggfeat.cli.weights:convert_caffe",
    "export-torchvision": "vggfeat.cli.weights:export_torchvision",
    "extract": "vggfeat.cli.extract:extract",
    "svm-eval": "vggfeat.cli.svm_eval:svm_eval",
    "train-backbone": "vggfeat.cli.train:train_backbone",
    "eval-backbone": "vggfeat.cli.train:eval_backbone",
    "datasets": "vggfeat.cli.datasets:datasets",
    "doctor": "vggfeat.cli.doctor:doctor",
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when it is used."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vggfeat")
def cli():
    """vggfeat: VGG backbones, dense multi-scale descriptors and linear-SVM transfer.

    \b
    Example:
        vggfeat extract --dataset voc2007 --root ~/data/VOCdevkit --weights vgg16
        vggfeat svm-eval voc2007-vgg16.h5 --out results/
    """


def main():
    cli(prog_name="vggfeat")
