"""
Question data in LiLA task-file format: generation, loading, prompts, scoring.

    generate.py   DeepMind's generator -> data/lila/<skill>.json (runs in .venv-gen)
    lila.py       load task files (ours or a real allenai/Lila download) into Examples
    prompts.py    the few-shot prompt: "Question: {q}\\nAnswer: {a}\\n\\n" x k, then the question
    episodes.py   training rows: solved questions packed like few-shot prompts, per step
    score.py      answer normalisation and exact match; accuracy per skill
    tokenizer.py  a digit-split byte-level BPE trained on the train split

See data/README.md for the file format and what counts as a correct answer.
"""
