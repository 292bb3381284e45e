"""
Put the study's outputs together: out/results.md (one row per configuration,
4-shot accuracy per skill and the mean) and out/REPORT.md (that table, the
forgetting matrix, the cluster quality and the routing heatmaps).

    python report.py --out out          # after experiment.sh (make experiment)

It reads what eval.py, cluster.py and train.py wrote and computes nothing new,
except the "expert on its own skill" row, which is the diagonal of the
forgetting matrix. Missing pieces are reported as missing, not invented.
"""
import glob
import json
import os

from data.cli import Parser, run

SKILLS = ["algebra", "arithmetic", "calculus", "comparison", "measurement", "numbers",
          "polynomials", "probability"]
ROWS = [("base-0shot", "base, 0-shot"), ("base-4shot", "base, 4-shot"), ("mixed", "mixed LoRA"),
        ("moe-task-hard", "router: task level, top-1 expert merged"),
        ("moe-task-soft", "router: task level, soft weights"),
        ("moe-centroid-token", "router: two-level, centroid prior, token gate"),
        ("moe-learned-token", "router: two-level, learned prior, token gate"),
        ("moe-centroid-sequence", "router: two-level, centroid prior, sequence gate"),
        ("moe-clusters-token", "router over cluster experts, two-level, token gate"),
        ("moe-rank1", "64 rank-1 experts trained jointly with the gate (MoR1E)")]


METRICS = {  # metric -> (key in eval.py's JSON, key in forgetting.json, scale, digits)
    "accuracy": ("accuracy", "accuracy", 100, 1),
    "answer NLL": ("answer_nll", "nll", 1, 3),
}


def row(name, values, metric="accuracy"):
    _, _, scale, digits = METRICS[metric]
    vals = [values.get(s) for s in SKILLS]
    known = [v for v in vals if v is not None]
    cells = ["-" if v is None else f"{scale * v:.{digits}f}" for v in vals]
    mean = f"{scale * sum(known) / len(known):.{digits}f}" if known else "-"
    return f"| {name} | " + " | ".join(cells) + f" | **{mean}** |"


def results_table(out, metric="accuracy"):
    """One row per configuration: the metric per skill and its mean over skills."""
    key, forg_key, _, _ = METRICS[metric]
    lines = ["| configuration | " + " | ".join(SKILLS) + " | mean |", "|---|" + "---:|" * (len(SKILLS) + 1)]
    table = {}
    forg = load(out, "forgetting", "forgetting.json")
    for name, label in ROWS:
        report = load(out, "eval", f"{name}.json")
        if report is not None and key in report:
            table[name] = report[key]
            lines.append(row(label, table[name], metric))
        if name == "mixed" and forg is not None and forg_key in forg:
            per = forg[forg_key]
            table["expert-own-skill"] = {s: per[s][s] for s in SKILLS if s in per}
            lines.append(row("each skill's expert on its own skill", table["expert-own-skill"], metric))
    return "\n".join(lines), table


def load(out, *parts):
    path = os.path.join(out, *parts)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def pct(x, digits=1):
    return "-" if x is None else f"{100 * x:.{digits}f}"


def routing_stats(report, skills):
    """(mean group entropy, mean number of groups above 10%) over the skills, or Nones."""
    per = (report or {}).get("routing", {}).get("per_skill", {})
    rows = [per[s] for s in skills if s in per]
    if not rows:
        return None, None
    return mean(r["group_entropy"] for r in rows), mean(r["groups_above_10pct"] for r in rows)


def composed_table(out):
    """Composed questions beside plain questions of the same skills, per configuration."""
    lines = ["| configuration | plain acc. | composed acc. | plain NLL | composed NLL | plain: group entropy "
             "| composed: group entropy | plain: groups > 10% | composed: groups > 10% |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, label in ROWS:
        comp = load(out, "eval", "composed", f"{key}.json")
        plain = load(out, "eval", f"{key}.json")
        if comp is None or plain is None:
            continue
        skills = sorted(comp["accuracy"])
        (pe, pg), (ce, cg) = routing_stats(plain, skills), routing_stats(comp, skills)
        f = lambda x: "-" if x is None else f"{x:.2f}"
        lines.append(f"| {label} | {pct(mean(plain['accuracy'].get(s) for s in skills))} | "
                     f"{pct(mean(comp['accuracy'].values()))} | "
                     f"{f(mean(plain.get('answer_nll', {}).get(s) for s in skills))} | "
                     f"{f(mean(comp.get('answer_nll', {}).values()))} | {f(pe)} | {f(ce)} | {f(pg)} | {f(cg)} |")
    return "\n".join(lines) if len(lines) > 2 else None


def steering_table(out):
    """Each skill's questions steered to its own expert, to the next skill's, and routed."""
    routed = load(out, "eval", "moe-centroid-token.json")
    lines = ["| skill | steered to own expert | steered to a wrong expert | the router decides |",
             "|---|---:|---:|---:|"]
    cols = [[], [], []]
    for s in SKILLS:
        own, wrong = load(out, "eval", "steer", f"own-{s}.json"), load(out, "eval", "steer", f"wrong-{s}.json")
        if own is None or wrong is None:
            continue
        vals = [own["accuracy"][s], wrong["accuracy"][s], routed["accuracy"].get(s) if routed else None]
        for c, v in zip(cols, vals):
            c.append(v)
        lines.append(f"| {s} | " + " | ".join(pct(v) for v in vals) + " |")
    if len(lines) == 2:
        return None
    lines.append("| **mean** | " + " | ".join(f"**{pct(mean(c))}**" for c in cols) + " |")
    return "\n".join(lines)


def routing_accuracy(out):
    """Share of test questions whose largest weight goes to their own skill's
    expert: of the task-level prior, and of the final weights (mean over layers)."""
    lines = ["| router | task level (prior) | final weights, mean over layers |", "|---|---:|---:|"]
    for name, label in ROWS:
        report = load(out, "eval", f"{name}.json")
        if not name.startswith("moe-") or report is None or "routing" not in report:
            continue
        experts = report["routing"]["experts"]
        recs = [r for r in report["records"] if r["skill"] in experts]
        prior = [r for r in recs if r["routing"].get("prior")]
        hit_prior = mean(float(experts[max(range(len(experts)), key=r["routing"]["prior"].__getitem__)]
                               == r["skill"]) for r in prior)
        final = [r for r in recs if "experts" in r["routing"]]
        hit_final = mean(float(experts[max(range(len(experts)), key=lambda e: sum(w[e] for w in r["routing"]["experts"]))]
                               == r["skill"]) for r in final)
        if hit_prior is not None or hit_final is not None:
            lines.append(f"| {label} | {pct(hit_prior)} | {pct(hit_final)} |")
    return "\n".join(lines) if len(lines) > 2 else None


def training_times(out):
    """Minutes of training per expert and for the mixed LoRA and routers (log.json)."""
    rows = []
    for path in sorted(glob.glob(os.path.join(out, "*", "log.json")) + glob.glob(os.path.join(out, "*", "*", "log.json"))):
        with open(path) as f:
            log = json.load(f)
        if log:
            rows.append(f"| {os.path.relpath(os.path.dirname(path), out)} | {log[-1]['step']} "
                        f"| {log[-1]['time'] / 60:.1f} |")
    return "\n".join(["| run | steps | minutes |", "|---|---:|---:|"] + rows) if rows else None


def main():
    p = Parser(description="Collect the study's outputs into out/REPORT.md.")
    p.add_argument("--out", default="out", help="the output directory of experiment.sh")
    args = p.parse_args()
    table, data = results_table(args.out)
    nll_table, nll_data = results_table(args.out, "answer NLL")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"accuracy": data, "answer_nll": nll_data}, f, indent=1)
    parts = ["# Study report", "", "Accuracy (%) on the test split, 4-shot unless named; every "
             "configuration sees the same questions (see experiment.sh for the sizes).", "", table, "",
             "Answer NLL (nats per answer token, teacher-forced after the same prompt; lower is "
             "better): it moves even where almost no answer is exactly right.", "", nll_table, ""]
    forg = os.path.join(args.out, "forgetting", "forgetting.md")
    if os.path.exists(forg):
        parts += ["## Forgetting", "", open(forg).read(), "![forgetting](forgetting/forgetting.png)", ""]
    clus = os.path.join(args.out, "clusters-test", "report.md")
    if os.path.exists(clus):
        parts += ["## Clusters of meta-questions (test split)", "", open(clus).read(),
                  "![clusters](clusters-test/clusters.png)", ""]
    for title, text in (("Composed questions (two skills chained) beside plain ones of the same skills",
                         composed_table(args.out)),
                        ("Routing accuracy: the largest weight on the question's own skill (%)",
                         routing_accuracy(args.out)),
                        ("Steering with --route (router centroid-token)", steering_table(args.out)),
                        ("Training time (wall, as logged)", training_times(args.out))):
        if text:
            parts += [f"## {title}", "", text, ""]
    for folder, title in (("routing", "plain questions"), ("routing-composed", "composed questions")):
        heatmaps = sorted(glob.glob(os.path.join(args.out, folder, "*", "routing_*.png")))
        if heatmaps:
            parts += [f"## Routing on {title}: mean expert weight per layer, per skill", ""]
            parts += [f"![{os.path.relpath(h, args.out)}]({os.path.relpath(h, args.out)})" for h in heatmaps]
            parts.append("")
    with open(os.path.join(args.out, "REPORT.md"), "w") as f:
        f.write("\n".join(parts) + "\n")
    print(table)
    print(f"wrote {args.out}/REPORT.md, results.md, results.json")


if __name__ == "__main__":
    run(main)
