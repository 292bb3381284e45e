"""The core files import one way: data -> model -> lora, cluster -> adapters,
router -> mixture, explain -> eval -> train -> study. A lower file never imports a higher one, and
no project import hides inside a function to dodge a cycle."""
import ast
import os

import pytest

from conftest import ROOT

# file -> its place in the reading order; a file may import only files of a lower place
ORDER = {
    "data/lila.py": 0, "data/score.py": 0, "data/cli.py": 0, "data/files.py": 0,
    "data/prompts.py": 1, "data/tokenizer.py": 2, "data/episodes.py": 2,
    "hf.py": 3, "kmeans.py": 3, "model.py": 4, "lora.py": 5, "cluster.py": 5, "adapters.py": 6, "router.py": 6, "flags.py": 6,
    "mixture.py": 7, "explain.py": 8, "eval.py": 9, "train.py": 10,
    "study/stats.py": 11, "study/goals.py": 12, "study/report.py": 13, "study/cli.py": 14, "study/heldout.py": 14,
    "study/__main__.py": 15,
}
MODULE = {path[:-3].replace("/", "."): path for path in ORDER}      # "data.lila" -> "data/lila.py"


def project_imports(path):
    """[(module, line, at top level)] of the project modules that a file imports."""
    tree = ast.parse(open(os.path.join(ROOT, path)).read())
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
                found.append((name, node.lineno, id(node) in top))
    return found


def test_every_core_file_is_placed():
    core = {f for f in os.listdir(ROOT) if f.endswith(".py")}
    core |= {f"data/{f}" for f in os.listdir(os.path.join(ROOT, "data"))
             if f.endswith(".py") and f not in ("__init__.py", "generate.py")}   # generate.py: its own venv
    core |= {f"study/{f}" for f in os.listdir(os.path.join(ROOT, "study")) if f.endswith(".py") and f != "__init__.py"}
    assert core == set(ORDER)


@pytest.mark.parametrize("path", sorted(ORDER))
def test_imports_run_one_way(path):
    for module, line, at_top in project_imports(path):
        assert at_top, f"{path}:{line} imports {module} inside a function"
        assert ORDER[MODULE[module]] < ORDER[path], f"{path}:{line} imports {module}, which comes later"


def test_the_check_can_fail(tmp_path, monkeypatch):
    """An upward import and a function-level import are both found."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "lila.py").write_text("import eval\n\ndef f():\n    import model\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", str(tmp_path))
    assert project_imports("data/lila.py") == [("eval", 1, True), ("model", 4, False)]
