"""The whole pipeline at phi-2's real sizes, from the command line, in fp32 and bf16.

microsoft/phi-2's own config.json (its values written out below) cut to 2 of its 32
layers: width 2560 (32 heads of 80), MLP 10240, vocab 51200. Every tensor is as large
as phi-2's: the embedding and lm_head hold 131M elements, past 2**24, where float32
can no longer name every position (an adapter's base fingerprint once indexed one
past the end there, and every phi-2 expert was lost at its first save). Random
weights in two fp16 shards with an index, a byte-level BPE with phi-2's added
whitespace tokens and no pad token (test_phi2_fixture.phi2_like_tokenizer).

Through the command lines, once in fp32 and once in bf16: two experts (each stopped
after its first save and resumed), eval.py --adapter, cluster.py, train.py --router,
eval.py --moe and explain.py; then PEFT loads one expert onto transformers'
PhiForCausalLM of the same weights and gives our logits.

Cost on 2 cores: about 2 minutes for each dtype, 5 GB peak memory (the PEFT check:
transformers' model and ours side by side in fp32).
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from formats import adapters
import model as M
from conftest import ROOT, write_hf_checkpoint
from data.lila import load
from data.prompts import format_qa, prompt_ids
from data.tokenizer import EOT
from test_phi2_fixture import FIXTURE, QUESTION, phi2_like_tokenizer

# microsoft/phi-2's config.json, all but num_hidden_layers (32) and the fields that
# only transformers reads (architectures, torch_dtype, transformers_version, use_cache)
PHI2_CONFIG = dict(vocab_size=51200, hidden_size=2560, intermediate_size=10240, num_hidden_layers=2,
                   num_attention_heads=32, num_key_value_heads=32, partial_rotary_factor=0.4,
                   max_position_embeddings=2048, rope_theta=10000.0, rope_scaling=None,
                   layer_norm_eps=1e-5, hidden_act="gelu_new", qk_layernorm=False,
                   tie_word_embeddings=False, resid_pdrop=0.1, embd_pdrop=0.0, attention_dropout=0.0,
                   initializer_range=0.02, bos_token_id=50256, eos_token_id=50256)


def run(*argv):
    """python ARGV in the repository root; its stdout and then its stderr (where the
    status lines go), after checking it exited 0."""
    done = subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"{argv}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def phi2_dir(tmp_path_factory):
    """A phi-2-sized checkpoint folder; <|endoftext|> keeps its place after the
    tokenizer's base ids, as phi-2's 50256 does."""
    path = str(tmp_path_factory.mktemp("phi2-size"))
    tok = phi2_like_tokenizer([format_qa(e.question, e.answers[0]) for e in load(FIXTURE, split="train")])
    eot = tok.token_to_id(EOT)
    hf = write_hf_checkpoint(path, dtype=torch.float16, shard="500MB",
                             **dict(PHI2_CONFIG, bos_token_id=eot, eos_token_id=eot))
    del hf
    tok.save(os.path.join(path, "tokenizer.json"))
    return path


def test_the_fixture_has_phi2s_sizes(phi2_dir):
    with open(os.path.join(phi2_dir, "model.safetensors.index.json")) as f:
        assert len(set(json.load(f)["weight_map"].values())) == 2
    cfg = M.PhiConfig.from_json(os.path.join(phi2_dir, "config.json"))
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.rotary_dim) == (51200, 2560, 10240, 32)
    assert cfg.vocab_size * cfg.hidden_size > 2 ** 24


def test_logits_and_greedy_decoding_match_transformers(phi2_dir):
    """The proof of the phi-2 path at phi-2's widths: our logits are transformers'
    to 1e-4 in fp32, and 32 greedy tokens through the KV cache are its tokens."""
    from transformers import PhiForCausalLM
    hf = PhiForCausalLM.from_pretrained(phi2_dir, dtype=torch.float32).eval()
    model, _ = M.load(phi2_dir)
    idx = torch.randint(1, 50000, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(idx) - hf(idx).logits).abs().max().item() <= 1e-4
    hf.generation_config.eos_token_id = None
    ref = hf.generate(idx[:1], max_new_tokens=32, do_sample=False, pad_token_id=0)[0, 12:].tolist()
    assert M.generate(model, [idx[0].tolist()], 32)[0] == ref


@pytest.mark.parametrize("dtype", ["float32", pytest.param("bfloat16", marks=pytest.mark.slow)])   # bf16: CPU-slow
def test_pipeline_at_phi2_sizes(phi2_dir, tmp_path, dtype):
    common = ["--model", phi2_dir, "--data", FIXTURE, "--device", "cpu", "--dtype", dtype]
    small = ["--steps", "4", "--batch-size", "2", "--seq-len", "128", "--warmup", "1", "--eval-every", "2",
             "--eval-questions", "4", "--eval-batches", "1", "--seed", "0"]
    experts = tmp_path / "experts"
    for skill in ("algebra", "numbers"):
        out = run("train.py", "--expert", skill, *common, *small, "--rank", "4", "--out", experts / skill,
                  "--stop-at", "2")
        assert "step 2: dev loss" in out and out.count("loaded ") == 1
        assert os.path.exists(experts / skill / "adapter_model.safetensors")        # saved at the first eval
        out = run("train.py", "--expert", skill, *common, *small, "--rank", "4", "--out", experts / skill,
                  "--resume")
        assert "resumed from" in out and "at step 2" in out and "step 4: dev loss" in out

    evaluate = ["eval.py", *common, "--shots", "4", "--limit", "2"]
    out = run(*evaluate, "--adapter", experts / "algebra", "--json", tmp_path / "adapter.json")
    assert "merged the adapter" in out and out.count("loaded ") == 1
    records = json.load(open(tmp_path / "adapter.json"))["records"]
    assert records and all(math.isfinite(r["answer_nll"]) for r in records)

    run("cluster.py", "--k", "2", "--out", tmp_path / "clusters", *common, "--split", "train",
        "--n-init", "2", "--no-raw", "--label-trials", "1", "--cache-dir", tmp_path / "cache")
    out = run("train.py", "--router", "--experts", experts, "--clusters", tmp_path / "clusters", *common,
              *small, "--router-questions", "4", "--n-groups", "2", "--out", tmp_path / "router")
    assert "step 4: dev loss" in out and out.count("loaded ") == 1

    out = run(*evaluate, "--moe", tmp_path / "router", "--json", tmp_path / "moe.json", "--out", tmp_path / "routing")
    assert "router (full), 4-shot" in out and out.count("loaded ") == 1
    records = json.load(open(tmp_path / "moe.json"))["records"]
    assert all(math.isfinite(r["answer_nll"]) for r in records)
    weights = torch.tensor(records[0]["routing"]["experts"])                        # (L, E)
    assert weights.shape == (2, 2) and torch.isfinite(weights).all()
    assert torch.allclose(weights.sum(-1), torch.ones(2), atol=1e-4)

    out = run("explain.py", QUESTION, "--moe", tmp_path / "router", *common)
    assert f"question       {QUESTION}" in out and "layer 1" in out and "\nanswer " in out

    peft_gives_our_logits(phi2_dir, experts / "algebra")


def peft_gives_our_logits(path, expert):
    """PEFT reads the saved expert onto transformers' model of the same weights:
    the logits agree with ours in fp32, and differ from the base's."""
    from peft import PeftModel
    from transformers import PhiForCausalLM
    model, tok = M.load(path, verbose=False)
    assert len(adapters.load_adapter(model, str(expert))) == 12                    # 6 targets x 2 layers
    shots = [(e.question, e.answers[0]) for e in load(FIXTURE, split="train", skills=["algebra"])[:2]]
    idx = torch.tensor([prompt_ids(tok, shots, QUESTION)[0]])
    with torch.no_grad():
        ours = model(idx)
        del model
        hf = PhiForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        base = hf(idx).logits
        theirs = PeftModel.from_pretrained(hf, str(expert)).eval()(idx).logits
    assert (theirs - ours).abs().max().item() <= 1e-3
    assert (theirs - base).abs().max().item() > 1e-3                                 # the expert is applied
