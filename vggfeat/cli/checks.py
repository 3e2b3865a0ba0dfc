"""Option checks that refuse a value before any work starts (exit status 2, naming the option).

click's FloatRange lets NaN through (every comparison with NaN is false) and knows nothing of
VGG's constraints (crops are multiples of the net's stride 32, widths must leave at least one
channel); these types do. Only click and math are imported here: every command module
imports this one at start-up.
"""
from __future__ import annotations

import math

import click

from vggfeat.utils.errors import EXIT_USAGE

STRIDE = 32  # five 2x2/2 max pools (vggfeat.models.vgg.TOTAL_STRIDE, without importing torch)


class FiniteFloat(click.FloatRange):
    """A float range that also refuses NaN and +-Inf."""

    name = "finite float"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


class CropSize(click.ParamType):
    """A crop side in pixels: a positive multiple of 32."""

    name = "pixels"

    def convert(self, value, param, ctx):
        try:
            size = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not an integer; give a multiple of 32, e.g. 224.", param, ctx)
        if size <= 0 or size % STRIDE:
            self.fail(f"{value} is not a positive multiple of {STRIDE} (the net's stride); "
                      "e.g. 32, 64, 224.", param, ctx)
        return size


class Width(FiniteFloat):
    """A channel multiplier that leaves every layer at least one channel (64 * width >= 1)."""

    name = "width"

    def __init__(self):
        super().__init__(min=0, min_open=True)

    def convert(self, value, param, ctx):
        width = super().convert(value, param, ctx)
        if round(64 * width) < 1:
            self.fail(f"{value} gives the first conv {64 * width:.2g} channels; give a width "
                      "of at least 1/64 = 0.015625, e.g. 0.125.", param, ctx)
        return width


def three_numbers(ctx, param, value):
    """Check '0.485,0.456,0.406': three finite numbers (positive for --std); returns the text
    unchanged, so the command parses it as before. The words `sample` and `imagenet` pass
    for --mean."""
    if value is None or (param is not None and param.name == "mean"
                         and value in ("sample", "imagenet")):
        return value
    try:
        numbers = [float(v) for v in str(value).replace(",", " ").split()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not three comma-separated numbers, e.g. "
                                 "0.485,0.456,0.406") from None
    if len(numbers) != 3:
        raise click.BadParameter(f"{value!r} has {len(numbers)} value(s); give one per RGB "
                                 "channel, e.g. 0.485,0.456,0.406")
    if not all(math.isfinite(v) for v in numbers):
        raise click.BadParameter(f"{value!r}: the values must be finite numbers")
    if param is not None and param.name == "std" and min(numbers) <= 0:
        raise click.BadParameter(f"{value!r}: a standard deviation must be positive")
    return ",".join(str(v) for v in numbers)


def require_device(device: str, option: str = "--device") -> None:
    """Refuse a device that does not exist here (cuda without a GPU, cuda:7, mps, a typo)."""
    from vggfeat.doctor import check_device

    if str(device).split(":")[0] not in ("auto", "cpu", "cuda", "mps"):
        raise click.BadParameter(f"{device!r} is not a device vggfeat runs on; use auto, cpu, "
                                 "cuda, cuda:N or mps.", param_hint=option)
    check = check_device(device)
    if check.failed:
        raise click.BadParameter(f"{check.detail}. Fix: {check.fix}.", param_hint=option)


class RefusedInput(click.ClickException):
    """A bad file, folder or option found by the library: one line, exit status 2.

    click's own ClickException exits 1 ("failed"); vggfeat documents 2 for bad input, so
    every command turns the library's input errors into this one.
    """

    exit_code = EXIT_USAGE


def input_error(error: BaseException) -> click.ClickException:
    """The CLI exception for a caught library error: exit 2, or the error's own exit_code.

    A run that failed rather than being refused (e.g. a diverged training run) carries
    `exit_code = 1` on its exception class.
    """
    failure = RefusedInput(str(error))
    failure.exit_code = getattr(error, "exit_code", RefusedInput.exit_code)
    return failure


def bf16_note(precision: str, device: str, images: int) -> None:
    """Print, once and on stderr (rank 0), the note that this CPU would run
    ``--precision bf16`` natively, when an fp32 job on the CPU is more than a few hundred
    images (`vggfeat.models.cpu_bf16.bf16_hint` decides)."""
    from vggfeat.models.cpu_bf16 import bf16_hint
    from vggfeat.utils import distributed
    from vggfeat.utils.devices import resolve_device

    try:
        device_type = resolve_device(device).type
    except (RuntimeError, ValueError):
        return
    note = bf16_hint(precision, device_type, images)
    if note and distributed.rank() == 0:
        click.echo(note, err=True)
