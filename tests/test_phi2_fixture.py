"""The phi-2 path, proven without phi-2's 5 GB of weights: a tiny checkpoint
shaped like microsoft/phi-2 where it matters to our code, and the whole tool
chain run on it from the command line.

What makes phi-2 different from phi-tiny, and what this fixture copies:
  tokenizer  a byte-level BPE with GPT-2's regex, digits NOT split (phi-tiny
             splits them); <|endoftext|> the last base id (phi-2's 50256, not 0);
             then CodeGen's added whitespace tokens (31..2 spaces, 9..2 tabs); no
             pad token
  weights    more embedding rows than tokens (phi-2: 51200 rows, 50295 tokens),
             so the model can emit ids that decode() silently drops; stored fp16,
             sharded with model.safetensors.index.json; partial_rotary_factor 0.4
The checkpoint is written by transformers itself (conftest.write_hf_checkpoint),
and transformers' PhiForCausalLM is the reference for its logits.

Checked here:
  - model.load reads it and matches transformers on a few-shot prompt (fp32, 1e-4);
  - generation never emits an id past the tokenizer (evaluate() included), and
    would, were n_tokens not passed;
  - one tokenization holds for this tokenizer: a 4-shot prompt + its gold answer
    (data.prompts.prompt_ids) is token for token a window of a training row
    (data.episodes.Episodes), and differs from tok.encode of the same text, so the
    piece-wise form matters here;
The command lines run on a checkpoint of phi-2's full sizes with this tokenizer
in test_phi2_size.py.
"""
import json
import os

import pytest
import torch
from safetensors import safe_open

import eval as E
import model as M
from conftest import ROOT, write_hf_checkpoint
from data.episodes import Episodes
from data.lila import load
from data.prompts import format_qa, prompt_ids
from data.tokenizer import EOT

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "ours")   # skills algebra and numbers
SPACES = [" " * n for n in range(31, 1, -1)]                   # CodeGen/phi-2's added tokens, in order
TABS = ["\t" * n for n in range(9, 1, -1)]
QUESTION = "Solve 3*y - 1 = -13 for y."


def phi2_like_tokenizer(texts, merges=300):
    """Byte-level BPE as phi-2's (GPT-2's regex, digits not split): 256 bytes and
    `merges` learned tokens, then <|endoftext|> as the last base id, then the 38
    whitespace tokens; no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + merges, special_tokens=[], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens([EOT])
    tok.add_tokens(SPACES + TABS)
    return tok


@pytest.fixture(scope="session")
def phi2_ckpt(tmp_path_factory):
    """(directory, tokenizer, transformers' model loaded back in fp32)."""
    path = str(tmp_path_factory.mktemp("phi2-like"))
    tok = phi2_like_tokenizer([format_qa(e.question, e.answers[0]) for e in load(FIXTURE, split="train")])
    n = tok.get_vocab_size()
    rows = -(-n // 64) * 64 + 64                                # more rows than tokens, as phi-2
    eot = tok.token_to_id(EOT)
    hf = write_hf_checkpoint(path, dtype=torch.float16, shard="100KB", seed=0, vocab_size=rows,
                             hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                             num_attention_heads=4, partial_rotary_factor=0.4,
                             max_position_embeddings=1024, rope_theta=10000.0, layer_norm_eps=1e-5,
                             resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0,
                             bos_token_id=eot, eos_token_id=eot)
    tok.save(os.path.join(path, "tokenizer.json"))              # replaces conftest's small one
    return path, tok, hf


def shots_and_question(skill="algebra", k=4):
    train_ex = load(FIXTURE, split="train", skills=[skill])
    return [(e.question, e.answers[0]) for e in train_ex[:k]], train_ex[k]


def test_checkpoint_is_shaped_like_phi2(phi2_ckpt):
    path, tok, _ = phi2_ckpt
    base = 256 + 300
    assert tok.token_to_id(EOT) == base                          # the last base id, not 0
    assert [tok.id_to_token(base + 1 + i) for i in range(38)] == SPACES + TABS
    assert tok.get_vocab_size() == base + 1 + 38
    assert [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(" 1234+5")] == ["Ġ1234", "+", "5"]
    numbers = [t.lstrip("Ġ") for t in tok.get_vocab() if t.lstrip("Ġ").isdigit()]
    assert max(map(len, numbers)) > 1                            # digits are not split
    assert tok.padding is None and tok.token_to_id("<pad>") is None
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["vocab_size"] > tok.get_vocab_size()
    assert cfg["bos_token_id"] == cfg["eos_token_id"] == tok.token_to_id(EOT)
    with open(os.path.join(path, "model.safetensors.index.json")) as f:
        shards = set(json.load(f)["weight_map"].values())
    assert len(shards) >= 2
    for shard in shards:                                         # fp16 on disk, as phi-2
        with safe_open(os.path.join(path, shard), framework="pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    assert M.PhiConfig.from_json(os.path.join(path, "config.json")).rotary_dim == 6   # 0.4 of 16


def test_load_matches_transformers_on_a_few_shot_prompt(phi2_ckpt):
    path, tok, hf = phi2_ckpt
    model, loaded_tok = M.load(path, verbose=False)
    assert loaded_tok.to_str() == tok.to_str()
    shots, q = shots_and_question()
    prompt, answer = prompt_ids(tok, shots, q.question, q.answers[0])
    idx = torch.tensor([prompt + answer])
    with torch.no_grad():
        ours, ref = model(idx), hf(idx).logits
    assert ours.shape == (1, len(prompt + answer), model.config.vocab_size)
    assert (ours - ref).abs().max().item() <= 1e-4


def test_generation_never_emits_ids_without_a_token(phi2_ckpt, monkeypatch):
    """With the rows past the tokenizer made the likeliest, generate() emits them
    unless told n_tokens, and evaluate() always tells it."""
    path, tok, _ = phi2_ckpt
    n = tok.get_vocab_size()
    model, _ = M.load(path, verbose=False)
    with torch.no_grad():
        model.lm_head.bias[n:] += 100.0
    shots, q = shots_and_question()
    prompts = [prompt_ids(tok, shots[:k], q.question)[0] for k in (0, 2, 4)]
    assert all(t >= n for row in M.generate(model, prompts, 4) for t in row)    # the test can fail
    assert all(t < n for row in M.generate(model, prompts, 4, n_tokens=n) for t in row)

    emitted, generate = [], M.generate

    def recording(*args, **kw):
        out = generate(*args, **kw)
        emitted.extend(t for row in out for t in row)
        return out
    monkeypatch.setattr(M, "generate", recording)
    test = E.select(load(FIXTURE, split="test"), 2, seed=0)
    records = E.evaluate(model, tok, test, load(FIXTURE, split="train"), shots=4, max_new_tokens=4)
    assert len(records) == 4 and emitted and all(t < n for t in emitted)


@pytest.mark.parametrize("rows", ["submodule", "skill"])
def test_one_tokenization_on_a_phi2_like_tokenizer(phi2_ckpt, rows):
    """The first 5 questions of a training row, read as 4 shots and a question
    with its answer, are token for token prompt_ids' prompt + answer; tok.encode
    of the same text is not."""
    _, tok, _ = phi2_ckpt
    eot = tok.token_to_id(EOT)
    algebra = load(FIXTURE, split="train", skills=["algebra"])
    examples = algebra if rows == "skill" else [e for e in algebra if e.submodule == algebra[0].submodule]
    by_question = {e.question: e for e in examples}
    T = 256
    episodes = Episodes(tok, examples, T, seed=0, loss="all", rows=rows)
    [(ids, _, starts, firsts)] = episodes.streams(0)              # one group: one submodule / skill
    x, y, first = episodes.batch(0, 4, with_first=True)
    for r in range(4):
        row = [x[r, 0].item()] + y[r].tolist()                     # loss "all": no -100 in y
        assert row[0] == eot
        assert any(firsts[j] == first[r] and ids[starts[j]:starts[j] + T].tolist() == row[1:]
                   for j in range(len(starts)))                     # a window of the stream
        held = tok.decode(row[1:]).split("Question: ")             # the questions the row holds
        assert held[0] == "" and len(held) > 5
        *shots, q = [by_question[h.split("\nAnswer:")[0]] for h in held[1:6]]
        assert shots[0] is examples[first[r]]
        solved = [(s.question, s.answers[0]) for s in shots]
        prompt, answer = prompt_ids(tok, solved, q.question, q.answers[0])
        assert len(prompt + answer) <= T + 1
        assert row[:len(prompt + answer)] == prompt + answer                    # one tokenization
        text = "".join(format_qa(a, b) for a, b in solved) + format_qa(q.question) + f" {q.answers[0]}\n\n"
        assert tok.decode(prompt + answer, skip_special_tokens=False) == EOT + text   # the same text
        assert [eot] + tok.encode(text).ids != prompt + answer                  # ... tokenized otherwise

