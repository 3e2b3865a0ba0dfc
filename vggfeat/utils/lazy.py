"""Public names imported on first use (PEP 562), for package faces that must stay light.

`import vggfeat` (and with it `vggfeat --version`) must not import torch, and the command
line reads the trainer's defaults without it; so a package's `__init__` maps each public
name to the module that defines it, and the module is imported when the name is first used.
"""
from __future__ import annotations

import importlib
import sys


def lazy_names(package: str, names: dict[str, str]):
    """``(__getattr__, __dir__)`` for `package`, whose public `names` (name -> the module
    that defines it) are imported on first use and then kept in the package's namespace.

    Example (in a package's ``__init__.py``)::

        __getattr__, __dir__ = lazy_names(__name__, {"Engine": "vggfeat.features.engine"})
    """

    def __getattr__(name: str):
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
