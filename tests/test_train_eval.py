"""train.py --base and eval.py end to end on tiny fixtures: resume is exact, the
output directory loads in transformers, eval writes its table and JSON."""
import json
import os
import subprocess
import sys

import pytest
import torch

import model as M
import train
from conftest import ROOT, TINY, write_hf_checkpoint
from data.episodes import Episodes
from data.lila import load
from data.tokenizer import train_tokenizer
from data.prompts import format_qa

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "ours")


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    texts = [format_qa(e.question, e.answers[0]) for e in load(FIXTURE, split="train")]
    path = str(tmp_path_factory.mktemp("tok") / "tokenizer.json")
    train_tokenizer(texts, vocab_size=300).save(path)
    return path


def base_args(out, tok, **kw):
    """train.py's own parser, with a 2-layer model and a few steps."""
    argv = ["--base", "--data", FIXTURE, "--tokenizer", tok, "--out", str(out), "--n-layer", "2",
            "--n-embd", "32", "--n-head", "2", "--rotary", "0.5", "--max-pos", "256",
            "--seq-len", "64", "--steps", "6", "--batch-size", "2", "--lr", "1e-3", "--warmup", "2",
            "--eval-every", "3", "--eval-batches", "1", "--eval-questions", "8",
            "--save-dtype", "float32", "--seed", "0", "--device", "cpu"] + ["--resume"] * kw.pop("resume", False)
    args = train.config(argv)
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_episodes_are_deterministic_and_mask_questions(tokenizer_path):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tokenizer_path)
    ex = load(FIXTURE, split="train")
    a = Episodes(tok, ex, 64, seed=0, loss="answer").batch(5, 3)
    b = Episodes(tok, ex, 64, seed=0, loss="answer").batch(5, 3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    x, y = a
    assert x.shape == y.shape == (3, 64) and (x[:, 0] == tok.token_to_id(M.EOT)).all()
    text = tok.decode([t for t in y[0].tolist() if t != -100])
    assert "Question" not in text and "Answer" not in text     # only answers carry the loss


@pytest.mark.parametrize("rows", ["submodule", "skill"])
def test_episode_rows_hold_one_submodule_or_one_skill(tokenizer_path, rows):
    """rows="submodule" (pretraining's rows): every row is one submodule.
    rows="skill": every row is one skill, and some rows mix its submodules."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tokenizer_path)
    ex = load(FIXTURE, split="train")
    by_question = {e.question: e for e in ex}
    x, _ = Episodes(tok, ex, 256, seed=0, rows=rows).batch(0, 16)
    mixed = 0
    for row in x:
        whole = tok.decode(row.tolist()).split("Question: ")[1:-1]      # the last one may be cut
        found = [by_question[q.split("\nAnswer:")[0].strip()] for q in whole]
        assert len(found) >= 2 and len({e.skill for e in found}) == 1
        mixed += len({e.submodule for e in found}) > 1
    assert (mixed > 0) == (rows == "skill")


def test_resume_restores_state_exactly(tmp_path, tokenizer_path):
    full = train.train(base_args(tmp_path / "full", tokenizer_path))
    train.train(base_args(tmp_path / "cut", tokenizer_path, stop_at=3))
    resumed = train.train(base_args(tmp_path / "cut", tokenizer_path, resume=True))
    for (name, p), q in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    log = json.load(open(tmp_path / "cut" / "log.json"))
    assert [r["step"] for r in log if "dev_loss" in r] == [3, 6]
    full_log = json.load(open(tmp_path / "full" / "log.json"))
    assert [r["dev_loss"] for r in log if "dev_loss" in r] == \
        [r["dev_loss"] for r in full_log if "dev_loss" in r]


def test_pretrained_directory_loads_in_transformers(tmp_path, tokenizer_path):
    from transformers import PhiForCausalLM
    train.train(base_args(tmp_path, tokenizer_path, steps=3))
    ours, _ = M.load(str(tmp_path))
    hf = PhiForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    idx = torch.randint(1, 300, (2, 20))
    with torch.no_grad():
        assert (ours(idx) - hf(idx).logits).abs().max() <= 1e-4


def test_eval_cli_end_to_end(tmp_path, tokenizer_path):
    train.train(base_args(tmp_path / "m", tokenizer_path, steps=3))
    out = tmp_path / "eval.json"
    cmd = [sys.executable, "eval.py", "--model", str(tmp_path / "m"), "--data", FIXTURE,
           "--shots", "2", "--limit", "3", "--batch-size", "4", "--json", str(out)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "| **algebra** |" in run.stdout and "mean over skills" in run.stdout
    report = json.load(open(out))
    assert set(report["accuracy"]) == {"algebra", "numbers"}
    assert len(report["records"]) == 6
    assert set(report["records"][0]) == {"question", "prediction", "answers", "skill", "submodule", "correct",
                                           "answer_nll", "shots"}
    assert {r["shots"] for r in report["records"]} == {2} and report["shots_used"] == {"fewest": 2, "most": 2,
                                                                                         "trimmed": 0}
    assert set(report["answer_nll"]) == {"algebra", "numbers"}


@pytest.mark.parametrize("source", ["nearest", "skill", "submodule"])
def test_eval_shots_from_each_source(source, tmp_path):
    """Each source of shots gives the prompts that draw_shots gives from its pool:
    the report names the source, and the shots it picks read as they should."""
    out = tmp_path / "eval.json"
    cmd = [sys.executable, "eval.py", "--data", FIXTURE, "--shots", "2", "--limit", "2", "--shots-from", source,
           "--json", str(out), "--device", "cpu"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert f"2-shot, shots from {source}" in run.stderr and json.load(open(out))["shots_from"] == source


def test_eval_says_how_many_shots_the_prompts_kept(tmp_path):
    """40 nearest shots do not fit phi-tiny's 1,024-token context: each prompt loses
    its oldest ones. The records, the JSON, the table's title and one line on stderr
    say how many were kept; stdout holds the results alone (status lines go to
    stderr), so `eval.py > table.md` is a clean table."""
    out = tmp_path / "eval.json"
    cmd = [sys.executable, "eval.py", "--data", FIXTURE, "--shots", "40", "--limit", "1", "--device", "cpu",
           "--json", str(out)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.load(open(out))
    kept = [r["shots"] for r in report["records"]]
    assert len(kept) == 2 and all(0 < k < 40 for k in kept)
    assert report["shots_used"] == {"fewest": min(kept), "most": max(kept), "trimmed": 2}
    span = f"{min(kept)}" if min(kept) == max(kept) else f"{min(kept)}-{max(kept)}"
    lines = run.stdout.splitlines()
    assert lines[0] == f"### phi-tiny, 40-shot asked, {span} used (trimmed to fit the 1024-token context), test split"
    assert lines[1] == lines[-2] == "" and all(line.startswith("|") for line in lines[2:-2])
    assert "questions/s" in lines[-1]
    assert f"2 of 2 prompts lost their oldest shots to fit the model's 1024-token context with --max-new-tokens 32 " \
        f"free; the fewest kept: {min(kept)} of --shots 40\n" in run.stderr
    assert f"wrote {out}" in run.stderr and "loaded " in run.stderr and "evaluating 2 test questions" in run.stderr


def test_shipped_phi_tiny_matches_transformers():
    from transformers import PhiForCausalLM
    path = os.path.join(ROOT, "checkpoints", "phi-tiny")
    ours, tok = M.load(path)
    hf = PhiForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    idx = torch.tensor([tok.encode("Question: What is 12 + 30?\nAnswer: 42\n\nQuestion: What is 7 + 5?\nAnswer:").ids])
    with torch.no_grad():
        assert (ours(idx) - hf(idx).logits).abs().max() <= 1e-4


def test_answer_nll_is_padding_free_cross_entropy():
    """Batched, from the left-padded prompts' KV cache that generate leaves, each
    row's answer NLL equals the cross-entropy of the answer tokens computed by one
    forward over that row's prompt and answer alone."""
    import torch.nn.functional as F
    from eval import answer_nll
    model, _ = M.load(os.path.join(ROOT, "checkpoints", "phi-tiny"))
    prompts, answers = [[5, 6, 7, 8, 9, 10], [11, 12], [13]], [[20, 21, 22], [23], [24, 25]]
    M.generate(model, prompts, 4, keep_cache=3)       # decoding overwrites the slots after the prompts
    got = answer_nll(model, prompts, answers)
    model.clear_cache()
    for p, a, g in zip(prompts, answers, got):
        with torch.no_grad():
            logits = model(torch.tensor([p + a]))[0]
        assert g == pytest.approx(F.cross_entropy(logits[len(p) - 1:-1], torch.tensor(a)).item(), rel=1e-5)


def test_limit_draws_a_skill_independently_of_the_others():
    """--limit picks a skill's questions from (seed, skill) alone: evaluating one
    skill, or it among all the others, compares the same questions."""
    from data.lila import Example
    from eval import select
    skills = ["algebra", "numbers", "probability"]
    examples = [Example(f"{s} question {i}", ("1",), s, f"{s}__x", "test") for s in skills for i in range(50)]
    alone = select([e for e in examples if e.skill == "probability"], 10, seed=7)
    together = [e for e in select(examples, 10, seed=7) if e.skill == "probability"]
    assert alone == together and len(alone) == 10
    assert alone != examples[100:110]                                    # shuffled, not the first ten
    assert alone != select(examples[100:], 10, seed=8)                   # the seed redraws them


def test_forgetting_and_paired_agree_with_the_records(tmp_path):
    """python -m study forgetting (the shipped phi-tiny and two shipped experts, each
    evaluated by eval.py --adapter) and python -m study paired BASE_JSON EXPERT_JSON give
    the same own-skill comparison, and both equal a count over the saved records."""
    from data.score import answer_form
    experts = os.path.join(ROOT, "checkpoints", "phi-tiny-moe", "experts")
    common = ["--model", os.path.join(ROOT, "checkpoints", "phi-tiny"), "--data", FIXTURE, "--shots", "2",
              "--limit", "4"]

    def run(*argv):
        done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout
    run("eval.py", *common, "--json", str(tmp_path / "base.json"))
    for skill in ("algebra", "numbers"):
        run("eval.py", *common, "--adapter", os.path.join(experts, skill), "--json", str(tmp_path / f"{skill}.json"))
    run("-m", "study", "forgetting", str(tmp_path / "base.json"), str(tmp_path / "algebra.json"),
        str(tmp_path / "numbers.json"), "--out", str(tmp_path / "f"))
    out = run("-m", "study", "paired", str(tmp_path / "base.json"), str(tmp_path / "algebra.json"))
    assert "wins : losses against base" in out
    forgetting = json.load(open(tmp_path / "f" / "forgetting.json"))
    base, alg = json.load(open(tmp_path / "base.json")), json.load(open(tmp_path / "algebra.json"))
    assert forgetting["base"] == base["accuracy"] and forgetting["accuracy"]["algebra"] == alg["accuracy"]
    for e in ("algebra", "numbers"):
        for s in forgetting["skills"]:
            assert forgetting["delta"][e][s] == pytest.approx(forgetting["accuracy"][e][s] - forgetting["base"][s])
    by_q = {r["question"]: r["correct"] for r in base["records"]}
    mine = [r for r in alg["records"] if r["skill"] == "algebra"]
    wins = sum(r["correct"] and not by_q[r["question"]] for r in mine)
    losses = sum(by_q[r["question"]] and not r["correct"] for r in mine)
    own = forgetting["own_skill"]["algebra"]
    assert (own["questions"], own["wins"], own["losses"]) == (len(mine), wins, losses)
    assert set(forgetting["own_skill"]) == {"algebra", "numbers"}
    row = f"| algebra | {own['questions']} | {own['base']} | {own['model']} ({wins} : {losses}, p "
    assert row in out
    kind = [answer_form(r["prediction"]) in {answer_form(a) for a in r["answers"]} for r in alg["records"]]
    points = sum(r["correct"] - by_q[r["question"]] for r in alg["records"]) / len(kind)
    assert f"| algebra | 1 | {100 * sum(kind) / len(kind):.1f} | {100 * points:+.1f} |" in out   # what they are made of
    bad = subprocess.run([sys.executable, "-m", "study", "paired", str(tmp_path / "base.json"), str(tmp_path / "nope.json")],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "nope.json: expected the JSON that `eval.py --json` writes" in bad.stderr


def test_eval_prompts_are_the_tokens_of_training_rows():
    """One tokenization: with phi-tiny's tokenizer, a 4-shot prompt followed by its
    gold answer is token for token the training row (data.episodes.Episodes) that holds
    the same five questions, and eval.py builds its prompts with that function;
    natural tokenization of the same text differs (it splits the "\\n\\n" before
    "Question" in two), so the test can fail."""
    from data.prompts import draw_shots, format_qa, prompt_ids, question_ids
    tok = M.load(os.path.join(ROOT, "checkpoints", "phi-tiny"), verbose=False)[1]
    ex = load(FIXTURE, split="train", skills=["algebra"])                 # 15 questions
    ids, _, starts, firsts = Episodes(tok, ex, 256, seed=0, rows="skill").streams(0)[0]
    pairs = lambda es: [(e.question, e.answers[0]) for e in es]           # noqa: E731
    for j in range(3):                               # rows starting at the first questions of the stream
        five = [ex[i] for i in firsts[j:j + 5]]
        row = [tok.token_to_id(M.EOT)] + ids[starts[j]:starts[j + 5]].tolist()
        prompt, gold = prompt_ids(tok, pairs(five[:4]), five[4].question, five[4].answers[0])
        assert prompt + gold == row
        text = "".join(format_qa(q, a) for q, a in pairs(five))
        assert tok.encode(text).ids != row[1:]
    q, pool = five[4], {"algebra": five[:4]}
    drawn = draw_shots(q, pool, 4, seed=0)
    assert question_ids(tok, q, pool, 4, 0, 1024, 32) == (*prompt_ids(tok, pairs(drawn), q.question, q.answers[0]), 4)


def test_lora_trains_on_a_bf16_base(tmp_path):
    """train.py --dtype bf16 (eval.py's name, as bfloat16): the frozen base is bf16,
    LoRA trains in fp32 under autocast, and losses and dev accuracy are finite numbers."""
    from safetensors import safe_open
    base = str(tmp_path / "base")                       # tiny, with room for 4-shot prompts
    write_hf_checkpoint(base, **{**TINY, "max_position_embeddings": 512})
    argv = ["--expert", "algebra", "--model", base, "--data", FIXTURE, "--steps", "2", "--batch-size", "2", "--seq-len", "64", "--eval-every", "2",
            "--eval-questions", "4", "--eval-batches", "1", "--dtype", "bf16", "--device", "cpu",
            "--out", str(tmp_path / "out")]
    model = train.train(train.config(argv))
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert dtypes["lm_head.weight"] == torch.bfloat16
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    log = json.load(open(tmp_path / "out" / "log.json"))
    assert all(torch.isfinite(torch.tensor(r.get("loss", r.get("dev_loss")))) for r in log)
    with safe_open(str(tmp_path / "out" / "adapter_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
