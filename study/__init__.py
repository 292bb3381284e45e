"""
The study: do routed skill experts keep what a fine-tune forgets? Everything
that puts the runs of train.py and eval.py side by side.

    bash study/experiment.sh            # the whole study (make experiment), run from the repository root
    python -m study paired A.json B.json   # and forgetting, curve, best, report: study/cli.py
    python -m study.heldout out --data data/heldout   # every configuration on other questions

- cli.py       the command line of `python -m study` (__main__.py runs it)
- stats.py     paired statistics over eval.py's records: sign test, bootstrap, the checks
- goals.py     the study's question, goal by goal, from the runs that decide it
- report.py    REPORT.md of a finished study folder
- plateau.py   REPORT.md of study/plateau.sh's folder: the choices on dev, the test with seeds pooled
- heldout.py   every configuration evaluated again on the same questions (loads a model)
- clusters.py  cluster.py's run with its report against the labels and the PCA picture (loads a model)
- experiment.sh  the whole study, stage by stage

Only heldout.py and clusters.py import torch (through eval.py and cluster.py);
the rest reads what the runs wrote. Nothing is imported here, so `import study.stats` loads no model code.
"""
