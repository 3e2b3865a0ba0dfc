"""`vggfeat info`: versions, devices, architectures and where weights are looked for."""
import platform

import click


def collect_info() -> dict:
    """What `vggfeat info` prints, as data (also used by `vggfeat doctor`)."""
    import torch
    import torchvision

    from vggfeat.models import ARCHS, PAPER_NAMES
    from vggfeat.models.weights import hub_checkpoint_dir, torchvision_weights
    from vggfeat.version import __version__

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})"
                    for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps")
    hub = hub_checkpoint_dir()
    found = []
    for arch in ARCHS:
        entry = torchvision_weights(arch)
        if entry is not None and (hub / entry.url.rsplit("/", 1)[-1]).exists():
            found.append(arch)
    letters = {v: k for k, v in PAPER_NAMES.items()}
    return {
        "vggfeat": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "cuda": torch.version.cuda or "none",
        "devices": devices,
        "architectures": [f"{a} ({letters[a]})" if a in letters else a for a in ARCHS],
        "weights_folder": str(hub), "weights_found": found or ["none"],
    }


@click.command()
def info():
    """Show versions, devices, architectures and where weights are looked for.

    \b
    Example:
        vggfeat info
    """
    for key, value in collect_info().items():
        if isinstance(value, list):
            value = ", ".join(value)
        click.echo(f"{key:>15}: {value}")
