# Two commands do the whole set-up:  make demo  (the main job)  and  make test.
# Each makes the virtual environments it needs; nothing is installed globally.
PY      := .venv/bin/python
GEN     := .venv-gen/bin/python
DATA    := data/lila
# per-submodule sizes of `make data`; the default is what phi-tiny was trained on
TRAIN   ?= 10000
DEV     ?= 50
TEST    ?= 100

.PHONY: demo test data experiment study plateau

.venv/.runtime: requirements.txt
	python3 -m venv .venv
	$(PY) -m pip install -q -r requirements.txt
	touch $@

.venv/.test: requirements-test.txt requirements-pictures.txt .venv/.runtime
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

# matplotlib, for the pictures only (heatmaps, curves): an extra, not a dependency of the library
.venv/.pictures: requirements-pictures.txt .venv/.runtime
	$(PY) -m pip install -q -r requirements-pictures.txt
	touch $@

# DeepMind's generator pins sympy 1.4 / numpy 1.23.5, which torch cannot live with:
# it gets a virtual environment of its own.
.venv-gen/.ready:
	python3 -m venv .venv-gen
	$(GEN) -m pip install -q mathematics-dataset==1.0.1 sympy==1.4 numpy==1.23.5 absl-py six tqdm
	touch $@

data: .venv-gen/.ready .venv/.runtime
	$(GEN) data/generate.py --out $(DATA) --train $(TRAIN) --dev $(DEV) --test $(TEST)
	$(PY) -m data.tokenizer --data $(DATA) --out data/tokenizer.json

# The mixture at work on the shipped phi-tiny: fresh questions from the generator;
# the base, the arithmetic expert merged and the routed mixture on the same questions
# (each table in out/demo/*.md, the mixture's routing heatmaps in out/demo/routing),
# side by side and question by question (out/demo/paired.md); then one question explained.
DEMO := $(PY) eval.py --data out/demo/data --limit 10
demo: .venv-gen/.ready .venv/.runtime .venv/.pictures
	$(GEN) data/generate.py --out out/demo/data --train 20 --dev 0 --test 10 --seed 7
	$(DEMO) --json out/demo/base.json > out/demo/base.md
	$(DEMO) --adapter checkpoints/phi-tiny-moe/experts/arithmetic --json out/demo/arithmetic.json > out/demo/arithmetic.md
	$(DEMO) --moe checkpoints/phi-tiny-moe/router --out out/demo/routing --json out/demo/mixture.json > out/demo/mixture.md
	$(PY) -m study paired out/demo/base.json out/demo/arithmetic.json out/demo/mixture.json > out/demo/paired.md
	cat out/demo/paired.md
	$(PY) explain.py "Solve 3*y - 1 = -13 for y." --data out/demo/data
	@echo; echo "The three side by side, question by question: out/demo/paired.md"; \
	echo "The mixture's routing heatmaps, mean expert weight per layer:" out/demo/routing/*.png

test: .venv/.test .venv-gen/.ready
	$(PY) -m pytest -q

# The whole study (see study/experiment.sh for its knobs); matplotlib comes with the test set.
# make experiment SMOKE=1: every stage at toy sizes, in minutes, into out/smoke (a check, not a result).
experiment: .venv/.test .venv-gen/.ready
	bash study/experiment.sh

# The study at size: continues the one kept in checkpoints/phi-tiny-study and writes docs/study.
study: .venv/.test .venv-gen/.ready
	OUT=checkpoints/phi-tiny-study STEPS=100 ROUTER_STEPS=100 LIMIT=200 DOCS=docs/study bash study/experiment.sh

# The study with plateau-trained experts and choices made on dev (study/plateau.sh), kept in
# checkpoints/phi-tiny-plateau; it resumes stage by stage.
plateau: .venv/.test .venv-gen/.ready
	OUT=checkpoints/phi-tiny-plateau DOCS=docs/plateau bash study/plateau.sh
