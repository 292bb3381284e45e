"""The layout: the top level holds the story and one command-line module; the
file formats, the data and the study live in packages. Imports run one way
along ORDER (a file imports only files before it, never inside a function),
the longest chain of imports is at most MAX_DEPTH files, no module that is not
a script imports a script, and README.md reads the story in this order."""
import ast
import os
import re

import pytest

from conftest import ROOT

STORY = ["model.py", "lora.py", "kmeans.py", "cluster.py", "router.py", "eval.py", "train.py", "explain.py"]
ORDER = [   # every project module; each may import only modules listed before it
    "formats/files.py", "formats/embeddings.py", "formats/pictures.py", "formats/router_fields.py", "data/lila.py", "data/score.py", "data/prompts.py",
    "data/tokenizer.py", "data/episodes.py", "formats/hf.py",
    "model.py", "lora.py", "formats/adapters.py", "kmeans.py", "formats/clusters.py", "cli.py", "cluster.py",
    "router.py", "formats/routers.py", "formats/state.py", "eval.py", "train.py", "explain.py",
    "study/stats.py", "study/curves.py", "study/goals.py", "study/report.py", "study/plateau.py", "study/cli.py", "study/heldout.py", "study/clusters.py", "study/__main__.py",
]
PACKAGES = ("data", "formats", "study")
MAX_DEPTH = 7        # files in the longest chain of imports
MAX_TOP = 10         # Python files at the top level
MODULE = {path[:-3].replace("/", "."): path for path in ORDER}      # "data.lila" -> "data/lila.py"


def project_imports(path, root=ROOT):
    """[(module path, line, at top level)] of the project modules that a file imports."""
    tree = ast.parse(open(os.path.join(root, path)).read())
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name in MODULE:
                found.append((MODULE[name], node.lineno, id(node) in top))
    return found


def is_script(path):
    """Run from the command line: a __main__.py, or a file with an `if __name__ == "__main__":` block."""
    tree = ast.parse(open(os.path.join(ROOT, path)).read())
    return path.endswith("__main__.py") or any(
        isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__" for node in tree.body)


def depth(path, memo):
    """Files in the longest chain of imports that starts at path."""
    if path not in memo:
        memo[path] = 1 + max((depth(m, memo) for m, _, _ in project_imports(path)), default=0)
    return memo[path]


def test_every_module_is_placed():
    found = {f for f in os.listdir(ROOT) if f.endswith(".py")}
    for package in PACKAGES:
        found |= {f"{package}/{f}" for f in os.listdir(os.path.join(ROOT, package))
                  if f.endswith(".py") and f != "__init__.py"}
    found.discard("data/generate.py")      # runs in its own environment, imports nothing of ours
    assert found == set(ORDER)
    assert len([f for f in found if "/" not in f]) <= MAX_TOP
    assert [f for f in ORDER if f in STORY] == STORY


@pytest.mark.parametrize("path", ORDER)
def test_imports_run_one_way(path):
    for module, line, at_top in project_imports(path):
        assert at_top, f"{path}:{line} imports {module} inside a function"
        assert ORDER.index(module) < ORDER.index(path), f"{path}:{line} imports {module}, which comes later"
        assert is_script(path) or not is_script(module), f"{path}:{line} imports the script {module}"


def test_import_chains_are_short():
    memo = {}
    deepest = max(ORDER, key=lambda p: depth(p, memo))
    assert memo[deepest] <= MAX_DEPTH, f"{deepest} starts a chain of {memo[deepest]} imports"


def test_readme_reads_the_story_in_order():
    """README.md's reading order names the story files in ORDER's order, with
    the line counts that `wc -l` gives today."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    listed = re.findall(r"^\|? ?\d+\.? *\| *`?(\w+\.py)`? *\| *(\d+) *\|", readme, flags=re.M)
    assert [name for name, _ in listed] == STORY
    for name, lines in listed:
        assert int(lines) == sum(1 for _ in open(os.path.join(ROOT, name))), name


def test_the_checks_can_fail(tmp_path, monkeypatch):
    """An upward import and a function-level import are both found."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "lila.py").write_text("import eval\n\ndef f():\n    import model\n")
    assert project_imports("data/lila.py", str(tmp_path)) == [("eval.py", 1, True), ("model.py", 4, False)]
