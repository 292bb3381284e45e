"""
Put the study's outputs together: out/results.md (one row per configuration,
4-shot accuracy per skill and the mean) and out/REPORT.md (that table, the
forgetting matrix, the cluster quality and the routing heatmaps).

    python report.py --out out          # after experiment.sh (make experiment)

It reads what eval.py, cluster.py and train.py wrote and computes nothing new,
except the "expert on its own skill" row, which is the diagonal of the
forgetting matrix. Missing pieces are reported as missing, not invented.
"""
import argparse
import glob
import json
import os

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


def row(name, acc):
    vals = [acc.get(s) for s in SKILLS]
    known = [v for v in vals if v is not None]
    cells = ["-" if v is None else f"{100 * v:.1f}" for v in vals]
    mean = f"{100 * sum(known) / len(known):.1f}" if known else "-"
    return f"| {name} | " + " | ".join(cells) + f" | **{mean}** |"


def results_table(out):
    lines = ["| configuration | " + " | ".join(SKILLS) + " | mean |", "|---|" + "---:|" * (len(SKILLS) + 1)]
    table = {}
    for key, label in ROWS:
        path = os.path.join(out, "eval", f"{key}.json")
        if os.path.exists(path):
            with open(path) as f:
                table[key] = json.load(f)["accuracy"]
            lines.append(row(label, table[key]))
        if key == "mixed":
            forg = os.path.join(out, "forgetting", "forgetting.json")
            if os.path.exists(forg):
                with open(forg) as f:
                    acc = json.load(f)["accuracy"]
                table["expert-own-skill"] = {s: acc[s][s] for s in SKILLS if s in acc}
                lines.append(row("each skill's expert on its own skill", table["expert-own-skill"]))
    return "\n".join(lines), table


def main():
    p = argparse.ArgumentParser(description="Collect the study's outputs into out/REPORT.md.")
    p.add_argument("--out", default="out", help="the output directory of experiment.sh")
    args = p.parse_args()
    table, data = results_table(args.out)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(data, f, indent=1)
    parts = ["# Study report", "", "Accuracy (%) on the test split, 4-shot unless named; every "
             "configuration sees the same questions (see experiment.sh for the sizes).", "", table, ""]
    forg = os.path.join(args.out, "forgetting", "forgetting.md")
    if os.path.exists(forg):
        parts += ["## Forgetting", "", open(forg).read(), "![forgetting](forgetting/forgetting.png)", ""]
    clus = os.path.join(args.out, "clusters-test", "report.md")
    if os.path.exists(clus):
        parts += ["## Clusters of meta-questions (test split)", "", open(clus).read(),
                  "![clusters](clusters-test/clusters.png)", ""]
    heatmaps = sorted(glob.glob(os.path.join(args.out, "routing", "*", "routing_*.png")))
    if heatmaps:
        parts += ["## Routing: mean expert weight per layer, per skill", ""]
        parts += [f"![{os.path.relpath(h, args.out)}]({os.path.relpath(h, args.out)})" for h in heatmaps]
    with open(os.path.join(args.out, "REPORT.md"), "w") as f:
        f.write("\n".join(parts) + "\n")
    print(table)
    print(f"wrote {args.out}/REPORT.md, results.md, results.json")


if __name__ == "__main__":
    main()
