"""The README's Python example runs as written, on a generated dataset and a tiny net.

Only its three input lines (`weights = ...`, `image_folder = ...`, `memory = ...`) are
pointed at test files; every other line runs verbatim.
"""
import re
from pathlib import Path

import torch
from helpers_datasets import make_folder_dataset

README = Path(__file__).resolve().parents[1] / "README.md"


def python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "the README should hold exactly one Python example"
    return blocks[0]


def test_readme_python_example_runs(tmp_path, tiny_weights, capsys):
    make_folder_dataset(tmp_path / "photos", classes=("cat", "dog"), per_class=6)
    code = python_example()
    code, found_weights = re.subn(r'^weights = .*$', f'weights = r"{tiny_weights}"', code,
                                  flags=re.M)
    code, found_folder = re.subn(r'^image_folder = .*$',
                                 f'image_folder = Path(r"{tmp_path / "photos"}")', code, flags=re.M)
    code, found_memory = re.subn(r'^memory = .*$', f'memory = Path(r"{tmp_path / "memory"}")',
                                 code, flags=re.M)  # not the user's own cache folder
    assert found_weights == found_folder == found_memory == 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny nets: threads only add overhead on a busy 2-core machine
    try:
        exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    finally:
        torch.set_num_threads(threads)
    accuracy = float(re.search(r"accuracy (\d\.\d+) \+- ", capsys.readouterr().out).group(1))
    assert accuracy >= 0.75  # two classes of distinctly coloured shapes; chance is 0.5
