"""Conventions shared by every command: one name and one help text per concept, and no
silently ignored options.

- `StrictCommand` / `StrictGroup`: an option that takes one value and is given twice is an
  error (click's default keeps the last one and drops the first without a word); options
  declared ``multiple=True`` or ``count=True`` accumulate as before.
- Decorators for the options several commands share (`root_option`, `device_option`,
  `workers_option`, `quiet_option`), so each is spelt and explained the same way.

Only click is imported here: every command module imports this one at start-up.
"""
from __future__ import annotations

import os

import click


def _repeated(order, ctx) -> list[click.Option]:
    """Options of `order` (params in the order the parser met them) given twice or more,
    that neither accumulate (multiple) nor count."""
    seen, twice = set(), []
    for param in order:
        if not isinstance(param, click.Option) or param.multiple or param.count:
            continue
        if param.is_eager and param.expose_value is False:  # --help, --version
            continue
        if param.name in seen and param not in twice:
            twice.append(param)
        seen.add(param.name)
    return twice


def _spelling(param: click.Option) -> str:
    return "/".join(param.opts + param.secondary_opts)


class _Strict:
    """Mixin: refuse an option given twice unless it accumulates."""

    def make_parser(self, ctx: click.Context):
        parser = super().make_parser(ctx)
        parse = parser.parse_args

        def parse_args(args):
            opts, largs, order = parse(args=args)
            twice = _repeated(order, ctx)
            if twice and not ctx.resilient_parsing:
                names = ", ".join(_spelling(p) for p in twice)
                raise click.UsageError(
                    f"{names} given more than once; it takes one value (the last would "
                    "silently win): give it once", ctx)
            return opts, largs, order

        parser.parse_args = parse_args
        return parser


class StrictCommand(_Strict, click.Command):
    """A command that refuses an option given twice unless it accumulates."""


class StrictGroup(_Strict, click.Group):
    """A group whose options, and whose subcommands' options, are strict."""

    command_class = StrictCommand
    group_class = type  # subgroups are StrictGroups too


def make_strict(command: click.Command) -> click.Command:
    """`command` (and a group's subcommands) made strict in place, whatever class it was
    declared with, so a command added later cannot forget the convention."""
    if not isinstance(command, _Strict):
        base = type(command)
        command.__class__ = type(f"Strict{base.__name__}", (_Strict, base), {})
    for sub in getattr(command, "commands", {}).values():
        make_strict(sub)
    return command


# -- shared options ----------------------------------------------------------------------

def cpu_count() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers(cap: int) -> int:
    """Decoding processes per process of a run: at most `cap`, never more than this
    process's share of the cores (torchrun's LOCAL_WORLD_SIZE processes share them), and
    one core left for the main process."""
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(0, min(cap, cpu_count() // local - 1))


def root_option(help_text: str, *, required: bool = False, alias: bool = False, **kwargs):
    """``--root`` (the dataset's location); ``alias`` also accepts the older ``--data``."""
    decls = ("--root", "--data", "data") if alias else ("--root",)
    return click.option(*decls, required=required, help=help_text, **kwargs)


def device_option(what: str = "The torch device"):
    return click.option(
        "--device", default="auto", show_default=True,
        help=f"{what}: auto (a GPU when one is present, else cpu), cpu, cuda, cuda:1, mps.")


def workers_option(cap: int, what: str = "Image-decoding processes"):
    """``--workers`` whose default fits the machine (resolved when the command runs)."""
    return click.option(
        "--workers", type=click.IntRange(0), default=None,
        help=f"{what} (0: decode in the main process) [default: min({cap}, CPU cores - 1), "
             f"here {default_workers(cap)}].")


def quiet_option(what: str = "No progress bars (results are still printed)."):
    return click.option("--quiet", "-q", is_flag=True, help=what)
