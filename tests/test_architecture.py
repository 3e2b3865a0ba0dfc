"""The package's shape (ARCHITECTURE.md): imports run one way, no circle, short modules, and
docstrings that cite documents which exist."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vggfeat"
MAX_LINES = 450      # any module: one job, readable in one sitting
MAX_CLI_LINES = 200  # a command parses options, makes one library call and prints


def test_layers_contract_holds():
    """import-linter's layers contract in pyproject.toml: cli -> applications ->
    evaluation | localisation -> features | training -> models | data -> utils."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(
                        graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circle():
    """No two modules import each other, directly or round a loop (imports inside functions
    count too)."""
    assert _cycles(grimp.build_graph("vggfeat")) == []


def test_cycle_finder_finds_a_circle():
    class Graph:
        modules = {"a", "b", "c", "d"}
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

        def find_modules_directly_imported_by(self, module):
            return self.edges[module]

    assert _cycles(Graph()) == [["a", "b", "c"]]


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_are_short(path):
    limit = MAX_CLI_LINES if path.parent.name == "cli" else MAX_LINES
    lines = len(path.read_text().splitlines())
    assert lines <= limit, f"{path.relative_to(ROOT)}: {lines} lines (at most {limit}): split it"


def test_docstrings_cite_documents_that_exist():
    """The paper's sections and tables, or files in this repository: never a document a
    reader cannot open."""
    stale = re.compile(r"SPEC section|SPEC\.md|the SPEC\b|SPEC choice|team brief|\.\./shared")
    texts = [*PACKAGE.rglob("*.py"), *ROOT.glob("*.md"), *(ROOT / "benchmarks").glob("*"),
             *(ROOT / "datasets").glob("*"), *(ROOT / "tests").glob("*.py")]
    found = [f"{p.relative_to(ROOT)}:{n}" for p in texts if p.is_file() and p.suffix in
             (".py", ".md") for n, line in enumerate(p.read_text().splitlines(), 1)
             if stale.search(line) and p.name != "test_architecture.py"]
    assert found == []


def test_documents_name_modules_that_exist():
    """Every `vggfeat/...` path that README, CONTRIBUTING and ARCHITECTURE name exists (a
    file moved in a restructure leaves no stale pointer behind)."""
    named = re.compile(r"`(vggfeat/[\w/.]*)`")
    missing = [f"{doc}: {path}" for doc in ("README.md", "CONTRIBUTING.md", "ARCHITECTURE.md")
               for path in named.findall((ROOT / doc).read_text())
               if not (ROOT / path).exists()]
    assert missing == []
