"""
Few-shot prompts, as lm-evaluation-harness builds them for generative QA.

    from data.prompts import few_shot_prompt
    prompt = few_shot_prompt(example, train_pool, k=4, seed=1234)

gives k solved questions of the same skill from the train split, then the
question itself, the answer left for the model (greedy, stop at a newline):

    Question: Solve 95 = 35*z - 10 for z.
    Answer: 3

    Question: What comes next: 201, 198, 195, 192, 189?
    Answer: 186

    Question: Solve -21*v - 96 = 156 for v.
    Answer:

Shots are fixed by (seed, question): the same question gets the same shots in
every run, model and process (the seed is hashed with sha256, not Python's
salted hash()), and changing the seed redraws them. A question is never its
own shot. Shots show their first answer.

Left out: instructions/task definitions in the prompt, and shots from other skills.
"""
import hashlib
import random


def format_qa(question, answer=None):
    """One shot 'Question: q\\nAnswer: a\\n\\n', or the open question 'Question: q\\nAnswer:'."""
    if answer is None:
        return f"Question: {question}\nAnswer:"
    return f"Question: {question}\nAnswer: {answer}\n\n"


def seeded_random(seed, key):
    """A random.Random fixed by (seed, key) alone: sha256, not Python's salted
    hash(), so every run and process draws the same."""
    digest = hashlib.sha256(f"{seed}\n{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def draw_shots(example, pool, k, seed):
    """k examples of example.skill from pool, never the question itself.

    pool is the train split: a list of Examples (other skills are skipped) or,
    faster for many questions, data.lila.by_skill(train)."""
    same = pool.get(example.skill, []) if isinstance(pool, dict) else pool
    candidates = [p for p in same if p.skill == example.skill and p.question != example.question]
    if len(candidates) < k:
        raise ValueError(f"need {k} shots of skill {example.skill!r}, but the pool has only "
                         f"{len(candidates)} other questions of it")
    return seeded_random(seed, example.question).sample(candidates, k)


def few_shot_prompt(example, pool, k, seed):
    """k shots (see draw_shots) followed by the open question."""
    shots = draw_shots(example, pool, k, seed)
    return "".join(format_qa(s.question, s.answers[0]) for s in shots) + format_qa(example.question)
