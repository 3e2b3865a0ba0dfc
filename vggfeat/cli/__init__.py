"""The `vggfeat` command line: one click group, each command a thin layer over the library.

Commands are imported lazily (name -> "module:function") so that `vggfeat --help` and
`vggfeat info` start fast and one command's heavy imports never slow down another.

Whatever escapes a command is turned into one line and an exit status here
(`vggfeat.utils.errors.describe`): a user never sees a traceback unless they ask for it with
`--debug` or VGGFEAT_DEBUG=1.
"""
import importlib

import click

from vggfeat.cli.options import StrictGroup, make_strict
from vggfeat.version import __version__

# Each entry: command name -> "module:attribute" of a click.Command.
COMMANDS = {
    "info": "vggfeat.cli.info:info",
    "convert-caffe": "vggfeat.cli.weights:convert_caffe",
    "export-torchvision": "vggfeat.cli.weights:export_torchvision",
    "extract": "vggfeat.cli.extract:extract",
    "svm-eval": "vggfeat.cli.svm_eval:svm_eval",
    "train-backbone": "vggfeat.cli.train:train_backbone",
    "eval-backbone": "vggfeat.cli.eval_backbone:eval_backbone",
    "eval-localisation": "vggfeat.cli.localisation:eval_localisation",
    "datasets": "vggfeat.cli.datasets:datasets",
    "doctor": "vggfeat.cli.doctor:doctor",
    "features": "vggfeat.cli.features:features",
    "compare": "vggfeat.cli.compare:compare",
}


class LazyGroup(StrictGroup):
    """A click group that imports a subcommand's module only when it is used, and turns
    any exception a command lets escape into a one-line message and an exit status.
    Every command is made strict (`vggfeat.cli.options`): a single-value option given twice
    is refused instead of the last one silently winning."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        return make_strict(getattr(importlib.import_module(module_name), attribute))

    def invoke(self, ctx):
        from vggfeat.utils import errors, interrupts

        try:
            return super().invoke(ctx)
        except interrupts.Interrupted as stop:  # before click turns it into "Aborted!"
            raise CommandFailed(str(stop), stop.exit_code) from None
        except (click.exceptions.ClickException, click.exceptions.Exit,
                click.exceptions.Abort):
            raise
        except Exception as error:  # noqa: BLE001 - the one place that catches everything
            if ctx.params.get("debug") or errors.debug_requested():
                raise
            message, status = errors.describe(error)
            raise CommandFailed(message, status) from None


class CommandFailed(click.ClickException):
    """A described failure: click prints "Error: <message>" to stderr and exits `status`;
    a stop (Ctrl-C, SIGTERM: status 130, 143) prints its "stopped ..." line as it is."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.exit_code = status

    def show(self, file=None) -> None:
        if self.exit_code in STOP_STATUSES:
            click.echo(self.message, err=True)
        else:
            super().show(file)


STOP_STATUSES = (130, 143)  # 128 + SIGINT, 128 + SIGTERM (vggfeat.utils.interrupts)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Exit status: 0 done, 1 failed, 2 bad usage or input, 3 some images "
                    "could not be read (extract), 130/143 stopped by Ctrl-C/SIGTERM "
                    "(rerun to continue).")
@click.version_option(__version__, prog_name="vggfeat")
@click.option("--debug", is_flag=True,
              help="Show the full traceback of a failure (also VGGFEAT_DEBUG=1).")
def cli(debug):
    """vggfeat: VGG backbones, dense multi-scale descriptors and linear-SVM transfer.

    \b
    Example:
        vggfeat extract --dataset voc2007 --root ~/data/VOCdevkit --weights vgg16
        vggfeat svm-eval voc2007-vgg16-fc7.h5 --out results/
    """


def main():
    """The console entry point: signals handled (`vggfeat.utils.interrupts`), the command,
    then an exit without the interpreter's slow teardown (`vggfeat.cli.fast_exit`). Tests
    call `cli` (click's runner), not this."""
    from vggfeat.cli.fast_exit import fast_exit
    from vggfeat.utils import interrupts

    interrupts.guard_streams()  # a closed stderr (EPIPE) or a hang-up never ends the work
    interrupts.install()  # Ctrl-C / SIGTERM: "stopped: ...", exit 130 / 143
    try:
        cli(prog_name="vggfeat")
    except SystemExit as done:  # click ends every standalone run with sys.exit
        fast_exit(done.code)
    fast_exit(0)
