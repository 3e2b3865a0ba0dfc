"""A quick run of the parser fuzzer (`fuzz_parsers.py`) in the suite: a few dozen inputs of
each kind, derandomised so a failure reproduces. The standalone script runs thousands."""
import pytest
from fuzz_parsers import TARGETS, fuzz

EXAMPLES = {"image": 60, "voc-xml": 60, "checkpoint": 10, "caffemodel": 40}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_parser_accepts_or_raises_its_own_error(target, one_torch_thread):
    fuzz(target, EXAMPLES[target], seed=0)
