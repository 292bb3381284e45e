# Two commands do the whole set-up:  make demo  (the main job)  and  make test.
# Each makes the virtual environments it needs; nothing is installed globally.
PY      := .venv/bin/python
GEN     := .venv-gen/bin/python
DATA    := data/lila
# per-submodule sizes of `make data`; the default is what phi-tiny was trained on
TRAIN   ?= 10000
DEV     ?= 50
TEST    ?= 100

.PHONY: demo test data experiment

.venv/.runtime: requirements.txt
	python3 -m venv .venv
	$(PY) -m pip install -q -r requirements.txt
	touch $@

.venv/.test: requirements-test.txt .venv/.runtime
	$(PY) -m pip install -q -r requirements-test.txt
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

# A short end-to-end demo on the shipped phi-tiny: fresh questions from the
# generator, 4-shot evaluation, and one answer generated from a prompt.
demo: .venv-gen/.ready .venv/.runtime
	$(GEN) data/generate.py --out out/demo-data --train 20 --dev 0 --test 10 --seed 7
	$(PY) eval.py --data out/demo-data --shots 4 --limit 20
	$(PY) -c "import model as M; from data.prompts import prompt_ids; m, t = M.load('checkpoints/phi-tiny'); \
	ids, _ = prompt_ids(t, [('What is 12 + 30?', '42')], 'What is 7 + 5?'); \
	new = M.generate(m, [ids], 8, eos_id=t.token_to_id(M.EOT), n_tokens=t.get_vocab_size(), \
	                 stop_fn=lambda n: chr(10) in t.decode(n))[0]; \
	print('1-shot, What is 7 + 5? ->', t.decode(new).split(chr(10))[0])"

test: .venv/.test .venv-gen/.ready
	$(PY) -m pytest -q

# The whole study (see experiment.sh for its knobs); matplotlib comes with the test set.
experiment: .venv/.test .venv-gen/.ready
	bash experiment.sh
