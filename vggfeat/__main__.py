"""`python -m vggfeat ...` (what `torchrun -m vggfeat` runs)."""
from vggfeat.cli import main

if __name__ == "__main__":
    main()
