"""Whether this CPU has bf16 instructions, what ``--precision bf16`` gives on it, and the
one-line hint `vggfeat extract` prints about it.

bf16 keeps fp32's 8-bit exponent with an 8-bit significand; oneDNN's bf16 convolutions
accumulate in fp32 ("Data types" in oneDNN's developer guide). Two kinds of hardware run them
natively (the flags are Linux's names in /proc/cpuinfo):

- ``avx512_bf16``: AVX512_BF16 (Intel Cooper Lake and later, AMD Zen 4 and later), a dot
  product of bf16 pairs per fp32 lane. On Zen 4 it does twice the multiply-adds of fp32 FMA
  per instruction; on an Intel Xeon with AMX, capped to it, VGG16 ran at 0.74x fp32
  (``benchmarks/RESULTS.md``), so the note and the expectation are for AMD only, and
  `measure_speedup` (doctor) says what it gives on the chip at hand.
- ``amx_bf16`` (with ``amx_tile``): Intel AMX (Sapphire Rapids and later), tile matrix
  multiplies; oneDNN uses them unless ``ONEDNN_MAX_CPU_ISA`` caps it below AMX.

Without either, oneDNN emulates bf16 and gains nothing: vggfeat then runs ``--precision
bf16`` under autocast (as before the fast path) and says so nowhere but here.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# `vggfeat extract` mentions bf16 once when running fp32 on the CPU on more images than
# "a few hundred": below that the whole run takes a minute or two and the hint is noise.
FEW_HUNDRED_IMAGES = 300
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Bf16Support:
    """This CPU's bf16 instructions (`known` False where the flags cannot be read)."""

    avx512_bf16: bool
    amx_bf16: bool
    known: bool = True
    isa_cap: str = ""  # ONEDNN_MAX_CPU_ISA, when set
    amd: bool = False  # vendor AuthenticAMD (Zen 4's AVX512_BF16 doubles fp32's rate)

    @property
    def native(self) -> bool:
        """Whether bf16 convolutions run on bf16 instructions rather than emulated."""
        return self.avx512_bf16 or self.amx_bf16

    @property
    def uses_amx(self) -> bool:
        """AMX present and not capped away by ONEDNN_MAX_CPU_ISA."""
        return self.amx_bf16 and (not self.isa_cap or "AMX" in self.isa_cap.upper())

    @property
    def faster_than_fp32(self) -> bool:
        """Whether bf16 is expected to beat fp32 here: AMX, or AVX512_BF16 on AMD (on Intel
        without AMX it measured slower than fp32: see `benchmarks/RESULTS.md`)."""
        return self.uses_amx or (self.avx512_bf16 and self.amd)

    def describe(self) -> str:
        """E.g. "AVX512_BF16 and AMX-BF16", "none" or "unknown (...)"."""
        if not self.known:
            return f"unknown (no {CPUINFO} to read the CPU's flags)"
        names = [n for n, present in (("AVX512_BF16", self.avx512_bf16),
                                      ("AMX-BF16", self.amx_bf16)) if present]
        text = " and ".join(names) or "none"
        if self.amx_bf16 and not self.uses_amx:
            text += f" (AMX unused: ONEDNN_MAX_CPU_ISA={self.isa_cap})"
        return text


def cpu_field(name: str, cpuinfo: Path = CPUINFO) -> str | None:
    """The first `name` line's value in Linux's /proc/cpuinfo, or None where there is none."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            return value.strip()
    return None


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str] | None:
    """The CPU's feature flags (Linux's /proc/cpuinfo), or None where there are none."""
    flags = cpu_field("flags", cpuinfo)
    return None if flags is None else frozenset(flags.split())


def bf16_support(cpuinfo: Path = CPUINFO) -> Bf16Support:
    """What `cpuinfo` says about bf16 instructions."""
    flags = cpu_flags(cpuinfo)
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    if flags is None:
        return Bf16Support(False, False, known=False, isa_cap=cap)
    return Bf16Support("avx512_bf16" in flags, {"amx_bf16", "amx_tile"} <= flags, isa_cap=cap,
                       amd=cpu_field("vendor_id", cpuinfo) == "AuthenticAMD")


def expected_gain(support: Bf16Support) -> str:
    """What ``--precision bf16`` gives on such a CPU, in words (no measurement)."""
    if support.uses_amx:
        return ("--precision bf16 runs VGG's convolutions on AMX tiles: several times fp32's "
                "speed (`vggfeat doctor` measures it), descriptors within cosine 0.9999 of fp32")
    if support.faster_than_fp32:
        return ("--precision bf16 runs VGG's convolutions on AVX512_BF16: up to twice fp32's "
                "multiply-adds per instruction on AMD Zen 4 (`vggfeat doctor` measures it), "
                "descriptors within cosine 0.9999 of fp32")
    if support.native:
        return ("--precision bf16 runs VGG's convolutions on AVX512_BF16, which on Intel "
                "cores without AMX is slower than fp32 (`vggfeat doctor` measures it)")
    return "--precision bf16 would be emulated here: no faster than fp32"


def bf16_hint(precision: str, device_type: str, images: int,
              support: Bf16Support | None = None) -> str | None:
    """The note `vggfeat extract` prints once (stderr), or None: only for fp32 on the CPU,
    more than `FEW_HUNDRED_IMAGES` images, and a CPU where bf16 is expected to be faster
    (`Bf16Support.faster_than_fp32`)."""
    if precision != "fp32" or device_type != "cpu" or images <= FEW_HUNDRED_IMAGES:
        return None
    support = support or bf16_support()
    if not support.faster_than_fp32:
        return None
    return (f"note: this CPU has {support.describe()} instructions: {expected_gain(support)} "
            "(a separate cache: fp32 stays the paper's reference)")


def measure_speedup(channels: int = 256, side: int = 56, repeats: int = 5) -> float:
    """fp32 time / bf16 time of one pre-packed 3 x 3 convolution (a VGG16 conv3 layer at
    Q = 224 with conv4's 256 channels, an image and its flip), both through
    `vggfeat.models.cpu`'s packed path, the best of `repeats` calls each (a busy spell
    slows one call, not the best): ~0.5 s in all.
    Raises RuntimeError where the oneDNN operators are missing."""
    from vggfeat.models.cpu import PackedTrunk, packed_ops_available

    if not packed_ops_available():
        raise RuntimeError("this PyTorch has no oneDNN packed convolution operators")
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
    best = {}
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            trunk = PackedTrunk(layers, dtype)
            x = torch.randn(2, channels, side, side).to(dtype)
            trunk(x)  # first call: oneDNN builds its kernel (and the OS enables AMX)
            best[dtype] = min(_seconds(trunk, x) for _ in range(repeats))
    return best[torch.float32] / best[torch.bfloat16]


def _seconds(call, x: torch.Tensor) -> float:
    start = time.perf_counter()
    call(x)
    return time.perf_counter() - start
