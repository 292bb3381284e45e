"""
Few-shot prompts, as lm-evaluation-harness builds them for generative QA.

    from data.prompts import draw_shots, prompt_ids
    shots = draw_shots(example, shot_pool(train, "skill"), k=4, seed=1234)   # random shots of its skill
    ids, gold = prompt_ids(tok, [(s.question, s.answers[0]) for s in shots], example.question,
                           example.answers[0])

gives the token ids of k solved questions from the train split, then the
question itself, the answer left for the model (greedy, stop at a newline),
and the ids of the gold answer. As text:

    Question: Solve 95 = 35*z - 10 for z.
    Answer: 3

    Question: What comes next: 201, 198, 195, 192, 189?
    Answer: 186

    Question: Solve -21*v - 96 = 156 for v.
    Answer:

Where the shots come from (draw_shots' source, eval.py --shots-from):
  nearest    the k train questions nearest to the question by the base model's
             embedding of its meta-question (cluster.nearest_shots), the nearest
             last; no label is read. The default: on phi-tiny's dev questions it
             beats random shots of the skill by 5 points and is level with the
             oracle below (docs/results.md)
  skill      random solved questions of the question's skill
  submodule  random ones of its own submodule: an oracle, as it reads the label
Random shots are fixed by (seed, question): the same question gets the same
shots in every run, model and process (the seed is hashed with sha256, not
Python's salted hash()), and changing the seed redraws them. A question is
never its own shot. Shots show their first answer.

One tokenization. A byte-level BPE splits the same characters differently
depending on what follows them: " 42\n\n" alone ends in one token for "\n\n",
while inside "42\n\nQuestion" the two newlines become two tokens. So the model
must never be shown a prompt tokenized one way after being trained on rows
tokenized the other. prompt_ids() is the one function that turns questions into
token ids, for training rows (train.py) and for evaluation prompts and their
gold answers (eval.py) alike:

    [<|endoftext|>] + tok("Question: q1\nAnswer:") + tok(" a1\n\n") + ...
                    + tok("Question: q\nAnswer:") [+ tok(" a\n\n")]

Each question and each answer is encoded on its own, so a prompt followed by
its gold answer is token for token a training row of the same questions
(tests/test_data.py holds this for phi-tiny's tokenizer and a phi-2-like one).
The pieces are the ones phi-tiny was pretrained on, which is why they were
chosen. They suit a model pretrained on natural text as well: every piece is
the natural tokenization of its own text, the answer piece ends in the "\n\n"
token that ends paragraphs and documents in such text, and the model is never
asked to produce the separator (generation stops at the first newline).
<|endoftext|> in front is where every training row starts, and what phi-2
puts between documents.

select(examples, limit, seed) picks the questions an evaluation (or the router's
training) uses: at most `limit` per skill, drawn from (seed, skill).
train_and_dev(folder, skills, seed) reads what train.py trains on and checks
with: the train and dev questions, a skill without dev questions lending some of
its train questions to dev (dev_from_train).

Left out: instructions/task definitions in the prompt.
"""
import hashlib
import random
import sys

from data.lila import by_skill, load
from formats.files import UserError

EOT = "<|endoftext|>"     # the document separator: it opens every prompt and training row
                          # (phi-2's end-of-text token, model.EOT: data/ sits below model.py)


def format_qa(question, answer=None):
    """One shot 'Question: q\\nAnswer: a\\n\\n', or the open question 'Question: q\\nAnswer:'."""
    if answer is None:
        return f"Question: {question}\nAnswer:"
    return f"Question: {question}\nAnswer: {answer}\n\n"


def solved_ids(tok, pairs):
    """Per (question, answer) pair: (ids of "Question: q\nAnswer:", ids of " a\n\n"),
    each piece encoded on its own; answer None gives no answer ids. The two
    texts joined are format_qa(q, a)."""
    questions = tok.encode_batch([format_qa(q) for q, _ in pairs])
    answers = tok.encode_batch(["" if a is None else f" {a}\n\n" for _, a in pairs])
    return [(q.ids, a.ids) for q, a in zip(questions, answers)]


def prompt_ids(tok, shots, question, answer=None):
    """(prompt ids, answer ids): <|endoftext|>, the solved shots (question, answer)
    and the open question; the answer ids are those of " answer\n\n" ([] if None).
    prompt + answer is exactly the token row train.py builds from these questions."""
    pieces = solved_ids(tok, list(shots) + [(question, answer)])
    ids = [tok.token_to_id(EOT)]
    for q, a in pieces[:-1]:
        ids += q + a
    return ids + pieces[-1][0], pieces[-1][1]


def seeded_random(seed, key):
    """A random.Random fixed by (seed, key) alone: sha256, not Python's salted
    hash(), so every run and process draws the same."""
    digest = hashlib.sha256(f"{seed}\n{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def select(examples, limit, seed):
    """At most `limit` questions per skill: a seeded shuffle, then the first ones,
    so every submodule of a skill is represented in proportion. Each skill has its
    own shuffle, drawn from (seed, skill), so a skill gets the same questions
    whichever other skills are loaded with it (`--skills probability` and a run
    over all eight agree)."""
    if limit is None:
        return examples
    out = []
    for skill, group in by_skill(examples).items():
        group = list(group)
        seeded_random(seed, skill).shuffle(group)
        out += group[:limit]
    return out


def dev_from_train(train, dev, seed):
    """(train, dev, lent): each skill of train without dev questions lends a tenth
    of its train questions (1 to 100, drawn by seed) to dev; lent names those
    skills. Skills with dev questions are left as they came."""
    lent = sorted({e.skill for e in train} - {e.skill for e in dev})
    held = set()
    for skill in lent:
        own = [i for i, e in enumerate(train) if e.skill == skill]
        held |= set(seeded_random(seed, f"dev of {skill}").sample(own, max(1, min(100, len(own) // 10))))
    return [e for i, e in enumerate(train) if i not in held], dev + [train[i] for i in sorted(held)], lent


def train_and_dev(folder, skills, seed):
    """(train, dev) questions of the task files in folder (of `skills`, or all),
    each skill with some train questions; a skill without dev questions lends
    some of its train questions to dev (dev_from_train), and says so."""
    everything = load(folder, skills=skills)
    train = [e for e in everything if e.split == "train"]
    untrained = sorted({e.skill for e in everything} - {e.skill for e in train})
    if untrained:
        raise UserError(f"{folder}: no train questions of {untrained}; expected some to train on")
    train, dev, lent = dev_from_train(train, [e for e in everything if e.split == "dev"], seed)
    if lent:
        n = sum(e.skill in lent for e in dev)
        print(f"{folder}: no dev questions of {lent}; {n} of their train questions are held out as "
              "dev (the dev loss, the dev accuracy and the kept step read them)", file=sys.stderr)
    return train, dev


SHOT_SOURCES = ("nearest", "skill", "submodule")   # where a prompt's shots come from
SHOT_POOL = 20000           # train questions that the nearest shots are searched among (drawn by seed)
SHOT_TEXTS = ("meta-question", "question")         # what is embedded to find the nearest shots


def shot_pool(train, source):
    """The train split grouped as draw_shots reads it for a random source:
    {skill: [Example, ...]} or {submodule: [...]}. (For "nearest" the pool is
    cluster.nearest_shots' {question: [Example, ...]}.)"""
    pool = {}
    for e in train:
        pool.setdefault(getattr(e, source), []).append(e)
    return pool


def draw_shots(example, pool, k, seed, source="skill"):
    """k solved questions for example's prompt, never the question itself.

    source "skill":     random ones of example.skill; pool is the train split, a
                        list of Examples or, faster, shot_pool(train, "skill");
           "submodule": random ones of example.submodule, from shot_pool(train,
                        "submodule"): an oracle, as it reads the question's label;
           "nearest":   the last k of pool[example.question], which
                        cluster.nearest_shots orders farthest first: the nearest
                        shot comes last, next to the question. No label is read."""
    if isinstance(pool, list):
        pool = shot_pool(pool, source)
    key = example.question if source == "nearest" else getattr(example, source)
    candidates = [p for p in pool.get(key, []) if p.question != example.question]
    if len(candidates) < k:
        what = "nearest questions" if source == "nearest" else f"other questions of {source} {key!r}"
        raise UserError(f"need {k} shots of {source} {key!r}, but the pool has only {len(candidates)} {what}")
    if source == "nearest":
        return candidates[len(candidates) - k:]
    return seeded_random(seed, example.question).sample(candidates, k)


def question_ids(tok, example, pool, shots, seed, context, max_new_tokens, source="skill"):
    """(prompt ids, gold answer ids, shots kept) of one question, k-shot (shots from
    `source`, see draw_shots), by prompt_ids (the function that builds train.py's
    rows too). A prompt that leaves less than max_new_tokens of the context free
    loses its oldest shots, one at a time, so it may keep fewer than k (eval.py
    says so); with none left, the gold answer must still fit (generation stops at
    the context)."""
    solved = [(s.question, s.answers[0]) for s in draw_shots(example, pool, shots, seed, source)]
    while True:
        prompt, gold = prompt_ids(tok, solved, example.question, example.answers[0])
        if len(prompt) + max(max_new_tokens, len(gold)) <= context:
            return prompt, gold, len(solved)
        if not solved:
            if len(prompt) + len(gold) <= context:
                return prompt, gold, 0
            raise UserError(f"a {example.skill} question of {len(prompt)} tokens and its "
                             f"{len(gold)}-token answer do not fit the model's {context}-token "
                             f"context: {example.question[:60]!r}...")
        solved = solved[1:]
