"""
Generate skill-labelled math questions with DeepMind's own generator and write
them as LiLA task files, one per skill.

    make data                                 # the default: data/lila/<skill>.json
    .venv-gen/bin/python data/generate.py --train 200 --out /tmp/small

The generator is the PyPI package `mathematics-dataset` 1.0.1 (Saxton et al.,
"Analysing Mathematical Reasoning Abilities of Neural Models", 2019). It only
imports with old pins (sympy 1.4, numpy 1.23.5), which clash with torch, so this
script runs in a virtual environment of its own (`.venv-gen`, made by
`make data`) and imports nothing from the project.

What it does, step by step:
  1. Build the generator's `train-easy` modules: every skill (top-level module:
     algebra, arithmetic, ...) has submodules (`algebra__linear_1d`, ...).
  2. Cut every submodule's work into fixed chunks of CHUNK questions. A chunk's
     random seed is derived from (--seed, submodule, chunk index), so the output
     does not depend on how many worker processes share the chunks.
  3. Questions are deduplicated per submodule in chunk order; the first --test
     unique questions go to `test`, the next --dev to `dev`, the next --train to
     `train`. Across a skill's submodules, a question already in a higher split
     (test, then dev) is replaced in place by a spare (disjoint_across_skill):
     no question of a skill sits in two splits.
     `--exclude DIR` counts every question of DIR as seen already: a fresh draw
     (another --seed) then shares no question with DIR.
  4. One LiLA task file per skill, instances sorted by submodule; each instance
     keeps its submodule. `--composed` also writes the `*_composed` submodules
     (questions that chain two skills) to `<out>/composed/<skill>.json`, apart
     from the single-skill files; `--composed-only` writes just those.

Same arguments give byte-identical files (hash randomisation is pinned too,
because sympy iterates over sets).

Left out: the train-medium/-hard and interpolate/extrapolate regimes.
"""
import argparse
import hashlib
import json
import multiprocessing
import os
import random
import sys
import time

SKILLS = ["algebra", "arithmetic", "calculus", "comparison",
          "measurement", "numbers", "polynomials", "probability"]
CHUNK = 100           # questions per work unit (and per seed)
OVERSAMPLE = 1.15     # draw this many more than needed, to survive deduplication


def submodules():
    """{'algebra__linear_1d': callable, ...} for the train-easy regime."""
    from mathematics_dataset.modules import modules

    def easy(range_):  # the generator's _make_entropy_fn(0, 3): lowest third
        lo, hi = range_
        return (lo, lo + (hi - lo) / 3)

    flat = {}
    for skill, subs in modules.train(easy).items():
        for name, fn in subs.items():
            flat[f"{skill}__{name}"] = fn
    return flat


def _expand_entities(context, **kwargs):
    """The generator's composition.expand_entities, with one change: it dedupes
    entities in a list, not a set. Entities hash by memory address, so the set's
    order (and hence the order of "Let ..." clauses in composed questions) would
    differ from run to run. random.shuffle follows, as in the original."""
    from mathematics_dataset.util import composition
    kwargs = kwargs.copy()
    entities = list(dict.fromkeys(context.child_entities))
    for key, value in kwargs.items():
        if isinstance(value, composition.Entity):
            if value not in entities:
                entities.append(value)
            kwargs[key] = value.handle
    random.shuffle(entities)
    parts = []
    for entity in entities:
        parts.append(entity.child_description)
        if not entity.expression_used:
            parts.append(entity.description)
    return " ".join(s for s in parts if s), kwargs


def chunk_seed(seed, name, index):
    digest = hashlib.sha256(f"{seed}/{name}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def run_chunk(task):
    """Generate CHUNK (question, answer) pairs for one submodule and chunk.

    Runs in a freshly forked process (maxtasksperchild=1): the generator and
    sympy keep caches that change how later draws consume random numbers, so a
    chunk must never see another chunk's leftovers."""
    import numpy as np
    from mathematics_dataset import generate_settings as gs
    from mathematics_dataset.util import composition
    composition.expand_entities = _expand_entities
    name, index, seed = task
    module = submodules()[name]
    s = chunk_seed(seed, name, index)
    random.seed(s)
    np.random.seed(s)
    out = []
    while len(out) < CHUNK:  # as the generator's sample_from_module: drop overlong ones
        try:
            problem = module()
        except AssertionError:   # a rare dead end in the generator's composed samplers: draw again
            continue
        q, a = str(problem.question), str(problem.answer)
        if len(q) <= gs.MAX_QUESTION_LENGTH and len(a) <= gs.MAX_ANSWER_LENGTH:
            out.append((q, a))
    return task, out


def excluded_questions(folder):
    """Every Input of every *.json LiLA task file under folder (composed/ included)."""
    found = set()
    for root, _, names in os.walk(folder):
        for n in sorted(names):
            if n.endswith(".json"):
                with open(os.path.join(root, n)) as f:
                    found.update(x["Input"] for x in json.load(f)["Instances"])
    if not found:
        sys.exit(f"generate.py: --exclude {folder}: no LiLA task files (*.json) with questions there")
    return found


def task_file(skill, instances, composed):
    kind = "composed questions (two skills chained)" if composed else "questions"
    return {
        "Definition": [f"Answer the {skill} {kind}. Give only the final answer."],
        "Source": ["DeepMind mathematics_dataset 1.0.1 (train-easy)"],
        "Categories": [{"Math category": skill, "Format": "Generative question answering"}],
        "Instances": instances,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="data/lila", help="output directory for <skill>.json files")
    p.add_argument("--train", type=int, default=2000, help="train questions per submodule")
    p.add_argument("--dev", type=int, default=50, help="dev questions per submodule")
    p.add_argument("--test", type=int, default=100, help="test questions per submodule")
    p.add_argument("--seed", type=int, default=1234, help="random seed; same seed, same bytes")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="worker processes")
    p.add_argument("--composed", action="store_true",
                   help="also write *_composed submodules to OUT/composed/")
    p.add_argument("--composed-only", action="store_true",
                   help="write only the *_composed submodules (to OUT/composed/)")
    p.add_argument("--skills", default=",".join(SKILLS), help="comma-separated skills to generate")
    p.add_argument("--exclude", default=None, metavar="DIR",
                   help="LiLA folder whose questions (every split, composed/ too) are never written: "
                        "a fresh draw that a model trained on DIR has not seen")
    args = p.parse_args()

    if os.environ.get("PYTHONHASHSEED") != "0":  # sympy orders some output by hash: pin it
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable] + sys.argv)

    skills = args.skills.split(",")
    unknown = sorted(set(skills) - set(SKILLS))
    if unknown:
        sys.exit(f"generate.py: unknown skill(s) {unknown}; known: {SKILLS}")
    excluded = set()
    if args.exclude:
        excluded = excluded_questions(args.exclude)
        print(f"excluding the {len(excluded)} questions of {args.exclude}", file=sys.stderr)
    composed = lambda n: n.endswith("_composed")
    names = [n for n in submodules() if n.split("__")[0] in skills
             and (composed(n) if args.composed_only else args.composed or not composed(n))]
    need = args.train + args.dev + args.test
    n_chunks = -(-int(need * OVERSAMPLE) // CHUNK)
    tasks = [(n, i, args.seed) for n in names for i in range(n_chunks)]
    print(f"generating {len(names)} submodules x {n_chunks * CHUNK} questions "
          f"({len(tasks)} chunks) on {args.workers} workers", file=sys.stderr)

    from tqdm import tqdm
    t0 = time.time()
    results = {}
    import mathematics_dataset.modules.modules  # noqa: F401  imported once, before the forks
    with multiprocessing.Pool(args.workers, maxtasksperchild=1) as pool:
        for task, pairs in tqdm(pool.imap_unordered(run_chunk, tasks), total=len(tasks)):
            results[task] = pairs

    files = {}  # (composed, skill) -> [(instances, spare questions) of each submodule]
    for name in names:
        pairs = [p for i in range(n_chunks) for p in results[(name, i, args.seed)]]
        files.setdefault((name.endswith("_composed"), name.split("__")[0]), []).append(
            split_instances(name, pairs, excluded, args.train, args.dev, args.test))
    write_files({key: disjoint_across_skill(subs) for key, subs in files.items()}, args.out)
    print(f"done in {time.time() - t0:.0f}s", file=sys.stderr)


def split_instances(name, pairs, excluded, train, dev, test):
    """A submodule's (question, answer) pairs, duplicates and excluded questions
    dropped in order, as task-file instances: the first `test` ones, then dev, then
    train; and the unique pairs left over, spares for disjoint_across_skill."""
    seen, unique = set(excluded), []
    for q, a in pairs:
        if q not in seen:
            seen.add(q)
            unique.append((q, a))
    if len(unique) < train + dev + test:
        print(f"  note: {name} has only {len(unique)} unique questions of {train + dev + test} wanted; "
              "train gets fewer", file=sys.stderr)
    instances, start = [], 0
    for split, n in [("test", test), ("dev", dev), ("train", train)]:
        instances += [{"Input": q, "Output Program": [], "Output Answer": [a], "split": split, "submodule": name}
                      for q, a in unique[start:start + n]]
        start += n
    return instances, unique[start:]


def disjoint_across_skill(subs):
    """One skill's instances, no question in two splits. Two submodules can draw the
    same question ("Calculate ((-4)/8)/(6/(-12))." is both arithmetic__mixed's and
    arithmetic__mul_div_multiple's), so a question of one submodule's test split may
    be another's train question. Splits rank test, dev, train: a dev or train
    instance whose question the skill holds in a higher split, or a test or dev
    instance that repeats one, is replaced, in its place, by its submodule's next
    spare question that the skill does not hold. Every other instance keeps its
    position, so shots drawn by position from the train split stay the same (two
    submodules may still share a train question). subs: [(instances, spares)] of
    each submodule."""
    rank = {"test": 0, "dev": 1, "train": 2}
    first = {}                               # question -> its highest split in the skill
    for instances, _ in subs:
        for x in instances:
            first[x["Input"]] = min(first.get(x["Input"], 2), rank[x["split"]])
    out, held = [], set()                    # held: the test and dev questions written
    for instances, spares in subs:
        spares = iter(spares)
        for x in instances:
            r = rank[x["split"]]
            if first[x["Input"]] < r or (r < 2 and x["Input"] in held):
                q, a = next(((q, a) for q, a in spares if q not in first), (None, None))
                if q is None:
                    sys.exit(f"generate.py: {x['submodule']} has no spare question left to replace "
                             f"{x['Input']!r}; draw more (OVERSAMPLE)")
                first[q] = r
                x = dict(x, Input=q, **{"Output Answer": [a]})
            held.update([x["Input"]] if r < 2 else [])
            out.append(x)
    return out


def write_files(files, out):
    """One task file per skill (composed ones under out/composed/), each written to
    a temporary name and renamed: a crash never leaves half a file."""
    for (composed, skill), instances in sorted(files.items()):
        folder = os.path.join(out, "composed") if composed else out
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{skill}.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(task_file(skill, instances, composed), f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
        counts = {s: sum(x["split"] == s for x in instances) for s in ("train", "dev", "test")}
        print(f"wrote {path}: {counts}", file=sys.stderr)


if __name__ == "__main__":
    main()
