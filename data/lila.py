"""
Load LiLA task files into a flat list of Examples.

    from data.lila import load, by_skill
    train = load("data/lila", split="train")              # every <skill>.json in the folder
    test = load("data/lila", split="test", skills=["algebra", "numbers"])
    shots_pool = by_skill(train)                          # {"algebra": [...], ...}

A LiLA task file (Mishra et al., "Lila: A Unified Benchmark for Mathematical
Reasoning", EMNLP 2022; github.com/allenai/Lila) is one JSON object:

    {"Definition": [...], "Source": [...],
     "Categories": [{"Math category": "algebra", ...}],
     "Instances": [{"Input": "Solve 95 = 35*z - 10 for z.",
                    "Output Program": [...], "Output Answer": ["3"],
                    "split": "train", "submodule": "algebra__linear_1d"}, ...]}

Our generator (data/generate.py) writes exactly this, one file per skill. A real
LiLA download (lila.zip: `all/*.json`, `multi/iid/{train,dev,test}.json`) reads
too; fields it lacks are filled in as follows.

  skill      the task's "Math category" in Categories; else the file name:
             `deepmind_mathematics_algebra__linear_1d.json` -> "algebra" (the
             prefix dropped, cut at "__"), `amps_algebra.json` -> "amps_algebra",
             `algebra_train.json` -> "algebra"; a file named just `train.json`
             (as in multi/iid/) takes its folder's name ("iid").
  split      the instance's "split" ("train", "dev" or "test"); else the file
             name (`train.json`, `algebra_dev.json`); else "test": a file that
             says nothing is held-out evaluation data, never trained on.
  submodule  the instance's "submodule"; else the file's skill-bearing name
             (`deepmind_mathematics_algebra`).
  answers    every "Output Answer", in order; the first is the one shots show.

"Output Program" and the other task fields are not read. A malformed file
raises UserError naming the file, the instance index and the field.
check_distinct and check_disjoint refuse a question asked twice, or asked and
also in the train split; they compare questions with each run of whitespace one
space, the ends stripped (same_question).
Left out: LiLA's Robust split (perturbed questions) and jsonl/parquet exports.
"""
import json
import os
import re
from dataclasses import dataclass

from formats.files import UserError

SPLITS = ("train", "dev", "test")
DEFAULT_DATA = "data/lila"          # where make data writes the generated task files


@dataclass(frozen=True)
class Example:
    question: str
    answers: tuple[str, ...]  # all accepted answers; answers[0] is shown in shots
    skill: str                # e.g. "algebra"
    submodule: str            # e.g. "algebra__linear_1d"
    split: str                # "train", "dev" or "test"


# ----------------------------------------------------------------------------
# what the file name says

def _name_parts(path):
    """(name, split or None) from a path: 'x/algebra_dev.json' -> ('algebra', 'dev'),
    'multi/iid/train.json' -> ('iid', 'train'), 'amps_algebra.json' -> ('amps_algebra', None)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem in SPLITS:
        folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
        return folder, stem
    m = re.fullmatch(r"(.+)_(train|dev|test)", stem)
    return (m[1], m[2]) if m else (stem, None)


def _skill_from_name(name):
    """'deepmind_mathematics_algebra__linear_1d' -> 'algebra'; other names are kept."""
    return name.removeprefix("deepmind_mathematics_").split("__")[0]


# ----------------------------------------------------------------------------
# one file

def _category(task, path):
    """The task's "Math category" from Categories, or None when it has none."""
    categories = task.get("Categories", [])
    if not isinstance(categories, list):
        raise UserError(f"{path}: field 'Categories': expected a list, got {type(categories).__name__}")
    for c in categories:
        if isinstance(c, dict) and "Math category" in c:
            value = c["Math category"]
            if not (isinstance(value, str) and value):
                raise UserError(f"{path}: field 'Categories'/'Math category': "
                                f"expected a non-empty string, got {value!r}")
            return value
    return None


def _instance(x, i, path, skill, name, file_split):
    """Check one instance and turn it into an Example."""
    def bad(field, why):
        return UserError(f"{path}: instance {i}: field {field!r}: {why}")

    if not isinstance(x, dict):
        raise UserError(f"{path}: instance {i}: expected a JSON object, got {type(x).__name__}")
    question = x.get("Input")
    if question is None:
        raise bad("Input", "missing")
    if not (isinstance(question, str) and question.strip()):
        raise bad("Input", f"expected a non-empty string, got {question!r:.80}")
    if any(line.lstrip().startswith(("Question:", "Answer:")) for line in question.split("\n")[1:]):
        raise bad("Input", "a line inside it starts with 'Question:' or 'Answer:', which would read as "
                  f"another question of the few-shot prompt: {question!r:.80}")
    answers = x.get("Output Answer")
    if not (isinstance(answers, list) and answers and all(isinstance(a, str) and a.strip() and "\n" not in a
                                                          for a in answers)):
        raise bad("Output Answer", f"expected a non-empty list of non-empty one-line strings, got {answers!r:.80}")
    split = x.get("split", file_split or "test")
    if split not in SPLITS:
        raise bad("split", f"expected one of {SPLITS}, got {split!r}")
    submodule = x.get("submodule", name)
    if not (isinstance(submodule, str) and submodule):
        raise bad("submodule", f"expected a non-empty string, got {submodule!r}")
    return Example(question, tuple(answers), skill, submodule, split)


def load_file(path):
    """Every instance of one task file, as Examples, in file order."""
    try:
        with open(path, encoding="utf-8") as f:
            task = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e})") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a task file") from None
    if not isinstance(task, dict):
        raise UserError(f"{path}: expected a JSON object with 'Instances', got {type(task).__name__}")
    instances = task.get("Instances")
    if instances is None:
        raise UserError(f"{path}: field 'Instances': missing")
    if not isinstance(instances, list):
        raise UserError(f"{path}: field 'Instances': expected a list, got {type(instances).__name__}")
    if not instances:
        raise UserError(f"{path}: field 'Instances': empty, expected at least one question")
    name, file_split = _name_parts(path)
    skill = _category(task, path) or _skill_from_name(name)
    return [_instance(x, i, path, skill, name, file_split) for i, x in enumerate(instances)]


# ----------------------------------------------------------------------------
# many files

def task_files(paths):
    """Expand files and folders to a list of task files. A folder gives the
    *.json files directly inside it, sorted (composed/ and other subfolders are
    not searched)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = []
    for p in map(os.fspath, paths):
        if os.path.isdir(p):
            found = sorted(os.path.join(p, n) for n in os.listdir(p)
                           if n.endswith(".json") and os.path.isfile(os.path.join(p, n)))
            if not found:
                raise UserError(f"{p}: no *.json task files in this folder")
            files += found
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise UserError(f"{p}: no such task file or folder (make data writes data/lila/)")
    return files


def load(paths, split=None, skills=None):
    """Examples from task files or folders (see task_files), in file order,
    optionally only one split and only some skills (a name or a list of names).
    Asking for a skill that has no examples (in that split) is an error, not an
    empty list; so is, when no skills are named, a skill of the files without
    examples in that split (it would silently drop out of an evaluation)."""
    if split is not None and split not in SPLITS:
        raise UserError(f"split must be one of {SPLITS} or None, got {split!r}")
    examples = [e for f in task_files(paths) for e in load_file(f)]
    everything = set(skills_of(examples))
    if split is not None:
        examples = [e for e in examples if e.split == split]
    missing = sorted(everything - set(skills_of(examples)))
    if skills is None and missing:
        raise UserError(f"{paths}: skill(s) {missing} have no {split} examples; expected every skill of "
                        f"the task files to have some (name the skills wanted, or leave those files out)")
    if skills is not None:
        wanted = {skills} if isinstance(skills, str) else set(skills)
        missing = sorted(wanted - {e.skill for e in examples})
        if missing:
            raise UserError(f"no {split + ' ' if split else ''}examples of skill(s) {missing} in {paths}; "
                            f"found: {skills_of(examples)}")
        examples = [e for e in examples if e.skill in wanted]
    return examples


def skills_of(examples):
    """The sorted distinct skills of some examples."""
    return sorted({e.skill for e in examples})


def same_question(x):
    """(skill, question with each run of whitespace one space, stripped): what the
    checks below compare, so "What is  2+3?" and "What is 2+3?" are one question."""
    return x.skill, " ".join(x.question.split())


def check_distinct(examples, where):
    """Each question once per skill (a repeated one would count twice in an evaluation)."""
    seen = set()
    for x in examples:
        if same_question(x) in seen:
            raise UserError(f"{where}: the {x.skill} question {x.question[:60]!r} comes more than once; "
                            "expected each question once")
        seen.add(same_question(x))


def check_disjoint(asked, train, where):
    """No question asked is also a train question of its skill: the shots come from
    the train split, and a model trained on it would be tested on what it saw."""
    seen = {same_question(x) for x in train}
    both = [x for x in asked if same_question(x) in seen]
    if both:
        raise UserError(f"{where}: {len(both)} {both[0].split} question(s) are also train questions of their "
                        f"skill, e.g. the {both[0].skill} question {both[0].question[:60]!r}; expected "
                        "disjoint splits")


def check_submodules(examples, where):
    """Each question names a submodule finer than its skill, as --shots-from
    submodule needs: without the "submodule" field (and a file name that names
    one), a question's submodule is its skill, and the shots would be the skill's."""
    coarse = sorted({x.skill for x in examples if x.submodule == x.skill})
    if coarse:
        raise UserError(f"{where}: the {coarse[0]} questions have no 'submodule' field (their submodule would be "
                        "the skill itself); --shots-from submodule needs it: use --shots-from nearest or skill")


def by_skill(examples):
    """{skill: [examples of it, in order]}, skills sorted: the shot pool for prompts."""
    groups = {s: [] for s in skills_of(examples)}
    for e in examples:
        groups[e.skill].append(e)
    return groups
