"""
Every configuration of a study folder evaluated again on the same questions,
e.g. on questions drawn apart from all training (it loads a model, as
study/clusters.py does).

    python -m study.heldout out --data data/heldout        # out/heldout/results.md and results.json
    python -m study.heldout out --data data/heldout --limit 50 --out out/heldout-50

The configurations are those study/experiment.sh trained under ROOT: the base
0-shot and k-shot, the mixed LoRA (ROOT/mixed), each skill's expert on its own
skill (ROOT/experts), and every router under ROOT/routers (two-level, and the
task level alone, soft and hard). One model and one set of questions are loaded
once (eval.py's Evaluator, with eval.py's question flags), and each
configuration is merged into it or attached in turn; the table is accuracy and
answer NLL per skill, as study/stats.py's config_rows writes it.

The rest of the study (python -m study) reads only what the runs wrote and
imports no torch; this file is kept apart for that reason.
Left out: the study's other runs (the rank-64 mixed LoRA, the full and
sequential fine-tunes, whose weights a study kept in git does not keep, the runs
of adding a skill), and paired tests (python -m study paired, on eval.py --json
files).
"""
import glob
import os

import cli
import model as M
from eval import Evaluator, Questions, moe
from formats import adapters
from formats.files import UserError, write_json, write_text
from formats.routers import read_config
from data.score import mean_accuracy
from study.stats import config_rows, per_skill

# ---------------------------------------------------------------------------
# 1. Every configuration of a study folder on the same questions
# ---------------------------------------------------------------------------

def heldout(ev, root, shots, out):
    """Base 0-shot and k-shot, the mixed LoRA, each skill's expert on its own
    skill, and every router under root/routers (two-level, and the task level
    alone, soft and hard), all on ev's questions. Writes results.md and
    results.json under out; returns {"accuracy", "answer_nll"}."""
    table, nlls = {}, {}

    def add(label, records):
        table[label], nlls[label] = per_skill(records)
        print(f"{label}: mean {100 * mean_accuracy(records):.1f}%")

    add("base, 0-shot", ev("base 0-shot", shots=0))
    add(f"base, {shots}-shot ({ev.source} shots)", ev("base"))
    mixed = os.path.join(root, "mixed")
    if os.path.exists(os.path.join(mixed, adapters.CONFIG_NAME)):
        add("mixed LoRA", adapters.with_adapter(ev.model, mixed, lambda: ev("mixed")))
    experts = os.path.join(root, "experts")
    own = []
    for name, path in (adapters.expert_dirs(experts) if os.path.isdir(experts) else {}).items():
        mine = [e for e in ev.examples if e.skill == name]
        own += adapters.with_adapter(ev.model, path, lambda: ev(name, examples=mine)) if mine else []
    if own:
        add("each skill's expert on its own skill", own)
    for path in sorted(glob.glob(os.path.join(root, "routers", "*", "router.json"))):
        router_dir = os.path.dirname(path)
        cfg = read_config(router_dir)
        for variant in ["full"] + ([] if cfg.rank1 or cfg.prior == "none" else ["task-soft", "task-hard"]):
            records, _ = moe(ev, router_dir, variant)
            add(f"router {os.path.basename(router_dir)} ({variant})", records)
    skills = sorted({s for accs in table.values() for s in accs})
    lines = [f"### Every configuration of {root} ({len(ev.examples)} questions)"]
    for what, values, fmt in (("accuracy (%)", {k: {s: 100 * v for s, v in a.items()} for k, a in table.items()},
                               "{:.1f}"), ("answer NLL", nlls, "{:.3f}")):
        lines += ["", f"{what}:", "", *config_rows(values, skills, fmt)]
    text = "\n".join(lines)
    print(text)
    os.makedirs(out, exist_ok=True)
    write_text(os.path.join(out, "results.md"), text)
    result = {"accuracy": table, "answer_nll": nlls}
    write_json(os.path.join(out, "results.json"), result)
    print(f"wrote {out}/results.md and results.json")
    return result


# ---------------------------------------------------------------------------
# 2. The command line
# ---------------------------------------------------------------------------

def parser():
    p = cli.Parser(prog="python -m study.heldout",
               description="Every configuration of a study folder evaluated on the same questions.")
    p.add_argument("root", help="a study folder (study/experiment.sh's OUT)")
    p.add_argument("--out", type=cli.writable_dir, default=None, help="where results.md/.json go (default ROOT/heldout)")
    cli.add_question_flags(p)
    return p


def main():
    args = parser().parse_args()
    if not os.path.isdir(args.root):
        raise UserError(f"{args.root}: no such study folder (study/experiment.sh's OUT)")
    model, tok = M.load(args.model, dtype=args.dtype, device=args.device, revision=args.revision)
    ev = Evaluator.build(model, tok, cli.pick(args, Questions))
    heldout(ev, args.root, args.shots, args.out or os.path.join(args.root, "heldout"))


if __name__ == "__main__":
    cli.run(main)
