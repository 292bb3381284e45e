"""
The training stream: batches of rows that have the shape of a few-shot prompt,
rebuilt exactly for any step, so that a resumed run sees the same tokens.

    episodes = Episodes(tok, examples, T=256, seed=1234, loss="answer", rows="skill")
    x, y = episodes.batch(step, B=16)        # (B, T) inputs and targets, -100 where no loss

Every row is tokenized by data.prompts.solved_ids, the function behind eval.py's
prompts too (prompt_ids), so a model is evaluated on exactly the token
sequences it was trained on.

Left out: packing rows of different groups into one sequence, and any
curriculum: groups are drawn uniformly.
"""
import numpy as np
import torch

from data.prompts import EOT, solved_ids
from formats.files import UserError


class Episodes:
    """Rows of T+1 tokens: <|endoftext|>, then solved questions of one submodule,
    "Question: q\\nAnswer: a\\n\\n" after another, cut at T+1 tokens: the shape
    of a few-shot prompt, so that in-context learning emerges. The questions are
    tokenized by data.prompts.solved_ids, piece by piece, exactly as eval.py's
    prompts are (prompt_ids), so a model is evaluated on the token sequences it
    was trained on. rows="skill"
    instead fills a row with questions of one skill, its submodules mixed, which
    is the shape of eval.py's prompts (shots drawn from the whole skill).

    Every group's (submodule's or skill's) questions are shuffled and laid end
    to end in one long token stream; a row is a window of that stream starting
    at a question. The shuffle is redrawn every RESHUFFLE steps (so neighbours
    change), and a row's group and window come from a generator seeded by
    (seed, step): any step's batch is rebuilt exactly after a restart. Slicing
    streams instead of assembling rows question by question keeps a batch of
    128 x 512 tokens at about a millisecond (a GPU step is tens of ms).

    loss="all" trains on every token; loss="answer" only on the answer tokens
    " a\\n\\n" (the targets elsewhere are -100, which cross_entropy ignores)."""

    RESHUFFLE = 200

    def __init__(self, tok, examples, T, seed, loss="all", rows="submodule"):
        self.T, self.seed = T, seed
        self.eot = tok.token_to_id(EOT)
        groups = {}
        for i, e in enumerate(examples):
            groups.setdefault(e.submodule if rows == "submodule" else e.skill, []).append(i)
        if not groups:
            raise UserError("no training examples")
        self.index = [groups[name] for name in sorted(groups)]   # example indices per group
        groups = {name: [examples[i] for i in idx] for name, idx in groups.items()}
        self.groups = []   # per group (submodule or skill): list of (token ids, loss mask) per question
        for name in sorted(groups):
            pieces = solved_ids(tok, [(e.question, e.answers[0]) for e in groups[name]])
            self.groups.append([(np.array(q + a), np.array([loss == "all"] * len(q) + [True] * len(a)))
                                for q, a in pieces])
        self._epoch, self._streams = None, None

    @property
    def rows(self):
        """Rows of T tokens in one pass over every question: the length of an epoch."""
        return sum(len(ids) for pairs in self.groups for ids, _ in pairs) // self.T

    def streams(self, epoch):
        """Per submodule: (ids, mask, starts, first) of its shuffled stream for this
        epoch; first[j] is the index (in `examples`) of the question at starts[j]."""
        if self._epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._streams = []
            for pairs, index in zip(self.groups, self.index):
                n_tokens = sum(len(p[0]) for p in pairs)
                reps = -(-2 * self.T // n_tokens) + 1        # tiny data: repeat to fill a row
                order = np.concatenate([rng.permutation(len(pairs)) for _ in range(reps)])
                lengths = np.array([len(pairs[i][0]) for i in order])
                ids = np.concatenate([pairs[i][0] for i in order])
                mask = np.concatenate([pairs[i][1] for i in order])
                starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
                fits = starts <= len(ids) - self.T
                self._streams.append((ids, mask, starts[fits], np.asarray(index)[order][fits]))
            self._epoch = epoch
        return self._streams

    def batch(self, step, B, device="cpu", with_first=False):
        """x (B, T) inputs and y (B, T) targets, -100 where no loss is taken
        (with_first: also each row's first question, as an index into `examples`)."""
        streams = self.streams(step // self.RESHUFFLE)
        rng = np.random.default_rng([self.seed, step])
        rows = np.empty((B, self.T + 1), dtype=np.int64)
        train = np.empty((B, self.T + 1), dtype=bool)
        rows[:, 0], train[:, 0] = self.eot, False
        first = np.empty(B, dtype=np.int64)
        for r, g in enumerate(rng.integers(len(streams), size=B)):
            ids, mask, starts, firsts = streams[g]
            j = rng.integers(len(starts))
            o = starts[j]
            rows[r, 1:], train[r, 1:], first[r] = ids[o:o + self.T], mask[o:o + self.T], firsts[j]
        ids, train = torch.from_numpy(rows), torch.from_numpy(train)        # (B, T+1) each
        x, y = ids[:, :-1], ids[:, 1:].masked_fill(~train[:, 1:], -100)     # (B, T) each
        if with_first:
            return x.to(device), y.to(device), first
        return x.to(device), y.to(device)
