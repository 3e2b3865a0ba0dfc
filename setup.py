"""vggfeat: VGG backbones, dense multi-scale descriptors and the paper's SVM protocols."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
version = {}
exec((ROOT / "vggfeat" / "version.py").read_text(), version)

setup(
    name="vggfeat",
    version=version["__version__"],
    description="Transfer-learning features from the VGG paper (Simonyan & Zisserman 2014)",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["vggfeat", "vggfeat.*"]),
    install_requires=[
        # 2.10+: torch.load(weights_only=True) without the known bypasses.
        "torch>=2.10",
        "torchvision>=0.25",
        "scikit-learn>=1.4",
        "h5py>=3.9",
        "pandas>=2.0",
        "click>=8.1",
        "numpy>=1.24",
        "pillow>=10.0",
        # Progress bars with rate and ETA on stderr.
        "tqdm>=4.66",
        # XML parsing without entity expansion or external entities (VOC annotations).
        "defusedxml>=0.7",
        # Precision-recall curves and the demo's comparison plot.
        "matplotlib>=3.7",
    ],
    extras_require={
        "dev": ["pytest>=8", "hypothesis>=6.100", "ruff>=0.5",
                # The layered-architecture contract in pyproject.toml (tests/test_architecture.py).
                "import-linter>=2.1"],
    },
    entry_points={"console_scripts": ["vggfeat=vggfeat.cli:main"]},
)
