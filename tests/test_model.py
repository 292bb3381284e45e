"""model.py against transformers' PhiForCausalLM (the reference), plus RoPE by hand."""
import os

import pytest
import torch

import model as M
from conftest import ROOT
from data.prompts import EOT

def batch(vocab, B=3, T=17, seed=1):
    return torch.randint(1, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def test_tiny_logits_match_transformers(tiny_ckpt):
    path, hf = tiny_ckpt
    assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))  # sharded
    model, tok = M.load(path)
    idx = batch(model.config.vocab_size)
    with torch.no_grad():
        ref = hf(idx).logits
        ours = model(idx)
    assert (ours - ref).abs().max().item() <= 1e-4


def test_greedy_generation_matches_transformers(tiny_ckpt):
    path, hf = tiny_ckpt
    model, _ = M.load(path)
    prompt = batch(model.config.vocab_size, B=1, T=7, seed=2)
    hf.generation_config.eos_token_id = None
    ref = hf.generate(prompt, max_new_tokens=32, do_sample=False, pad_token_id=0)[0, 7:].tolist()
    ours = M.generate(model, [prompt[0].tolist()], 32)[0]
    assert len(ours) == 32 and ours == ref


def test_cached_decode_equals_full_forward(tiny_ckpt):
    model, _ = M.load(tiny_ckpt[0])
    idx = batch(model.config.vocab_size, B=2, T=12)
    with torch.no_grad():
        full = model(idx)
        model.setup_cache(2, 12)
        steps = [model(idx[:, :5], start=0)]
        steps += [model(idx[:, t:t + 1], start=t) for t in range(5, 12)]
        model.clear_cache()
    assert torch.equal(torch.cat(steps, dim=1).argmax(-1), full.argmax(-1))
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-5


def test_prefill_and_decode_steps_equal_the_full_forward(tiny_ckpt):
    """generate()'s two halves by hand: prefill's logits are the full forward's at
    the last prompt token, and each decode_step's those at the token it feeds."""
    model, _ = M.load(tiny_ckpt[0])
    idx = batch(model.config.vocab_size, B=2, T=12)
    with torch.no_grad():
        full = model(idx)                                          # (2, 12, V)
        logits, valid, pos = M.prefill(model, idx[:, :8].tolist(), room=4)
        steps = [logits]
        for t in range(8, 11):
            steps.append(M.decode_step(model, idx[:, t], valid, pos + t - 7, slot=t))
        model.clear_cache()
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, 7:11], atol=1e-5, rtol=1e-5)


def test_batched_greedy_equals_one_at_a_time(tiny_ckpt):
    model, _ = M.load(tiny_ckpt[0])
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, 320, (n,), generator=g).tolist() for n in (3, 11, 6, 1)]
    together = M.generate(model, prompts, 20)
    alone = [M.generate(model, [p], 20)[0] for p in prompts]
    assert together == alone


def test_batched_logits_match_transformers_with_left_padding(tiny_ckpt):
    path, hf = tiny_ckpt
    model, _ = M.load(path)
    idx = batch(320, B=2, T=9)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[0, :4] = False                                  # row 0 is left-padded by 4
    pos = (valid.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = hf(idx, attention_mask=valid.long(), position_ids=pos).logits
        ours = model(idx, pos, valid)
    assert (ours[valid] - ref[valid]).abs().max() <= 1e-4


def test_bf16_close_to_fp32(tiny_ckpt):
    """bf16 keeps 8 mantissa bits (relative error ~4e-3 per op); through 2 layers
    the logits move by a few 1e-2 at most, far below the gap between top tokens."""
    m32, _ = M.load(tiny_ckpt[0])
    m16, _ = M.load(tiny_ckpt[0], dtype="bf16")
    idx = batch(320)
    with torch.no_grad():
        a, b = m32(idx), m16(idx).float()
    assert (a - b).abs().max() < 0.05
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9


def test_sampling_is_seeded_and_respects_top_k(tiny_ckpt):
    model, _ = M.load(tiny_ckpt[0])
    p = [[5, 6, 7]]
    a = M.generate(model, p, 10, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    b = M.generate(model, p, 10, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    assert a == b
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0]])
    draws = {M.sample(logits, 1.0, 2).item() for _ in range(50)}
    assert draws <= {1, 3}


def test_stop_string_and_eos(tiny_ckpt):
    model, tok = M.load(tiny_ckpt[0])
    full = M.generate(model, [[5, 6, 7]], 10)[0]
    cut = M.generate(model, [[5, 6, 7]], 10, stop_fn=lambda new: len(new) == 3)[0]
    assert cut == full[:3]
    eos = M.generate(model, [[5, 6, 7]], 10, eos_id=full[2])[0]
    assert eos == full[:full.index(full[2])]


def test_generation_stops_at_the_token_prompts_open_with():
    """model.EOT, where complete() stops, is data.prompts.EOT, which opens every
    prompt and training row (data/ sits below model.py, so each names it)."""
    assert M.EOT == EOT == "<|endoftext|>"


def test_complete_cuts_at_the_stop():
    """phi-tiny answers and goes on to the next line: complete keeps the text
    before the first newline, the same for a text prompt and its token ids."""
    model, tok = M.load(os.path.join(ROOT, "checkpoints", "phi-tiny"), verbose=False)
    prompt = "Question: What is 2 + 3?\nAnswer:"
    full = M.complete(model, tok, [prompt], max_new_tokens=12, stop=None)[0]
    assert "\n" in full.strip(" ")                    # there is something to cut
    cut = M.complete(model, tok, [prompt, tok.encode(prompt).ids], max_new_tokens=12, stop="\n")
    assert cut == [full.split("\n")[0]] * 2


@pytest.mark.parametrize("stop", ["\n", "Question: What", "value of 1"])
def test_decoding_stops_at_the_token_that_completes_the_stop(stop):
    """complete() stops at the first token after which the output holds `stop`, also
    when `stop` spans several tokens (its stop test reads only the output's tail):
    the forwards are the prefill and one decode step per further token."""
    model, tok = M.load(os.path.join(ROOT, "checkpoints", "phi-tiny"), verbose=False)
    prompt = "Question: What is 2 + 3?\nAnswer:"
    ids = M.generate(model, [tok.encode(prompt).ids], 24)[0]
    first = next(i for i in range(1, len(ids) + 1) if stop in tok.decode(ids[:i]))
    assert first < len(ids)                           # the stop comes before the end
    forwards = []
    hook = model.register_forward_hook(lambda *args: forwards.append(1))
    try:
        M.complete(model, tok, [prompt], max_new_tokens=24, stop=stop)
    finally:
        hook.remove()
    assert len(forwards) == first


def test_rope_by_hand():
    cfg = M.PhiConfig(hidden_size=160, num_attention_heads=2)   # hs 80, R 32 as phi-2
    assert cfg.head_dim == 80 and cfg.rotary_dim == 32
    cos, sin = M.rope_tables(cfg)
    x = torch.randn(1, 2, 3, 80)
    out = M.apply_rope(x, cos[:3][None, None], sin[:3][None, None], 32)
    assert torch.equal(out[:, :, 0], x[:, :, 0])               # position 0: identity
    assert torch.equal(out[..., 32:], x[..., 32:])              # dims 32..79 untouched
    # position 1, pair (0, 16) rotates by angle 1 * theta^0 = 1 radian (half-split pairs)
    c, s = torch.cos(torch.tensor(1.0)), torch.sin(torch.tensor(1.0))
    x0, x16 = x[0, 0, 1, 0], x[0, 0, 1, 16]
    assert torch.allclose(out[0, 0, 1, 0], x0 * c - x16 * s)
    assert torch.allclose(out[0, 0, 1, 16], x16 * c + x0 * s)


def reference_attention(model, on):
    """Switch every layer between the written-out attention() and sdpa."""
    for layer in model.model.layers:
        layer.self_attn.sdpa = not on


def left_padded(T=12, lengths=(12, 5, 1), seed=4, vocab=320):
    """A left-padded batch as generate() builds it: ids, valid, positions."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(1, vocab, (len(lengths), T), generator=g)
    valid = torch.zeros(len(lengths), T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        valid[b, T - n:] = True
    return idx, valid, (valid.long().cumsum(-1) - 1).clamp(min=0)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 0.05)])
def test_sdpa_equals_written_out_attention(tiny_ckpt, dtype, tol):
    """The fast path (F.scaled_dot_product_attention) and the reference give the
    same logits: plain causal, left-padded, and decoding through the KV cache."""
    model, _ = M.load(tiny_ckpt[0], dtype=dtype)
    idx, valid, pos = left_padded()

    def run():
        with torch.no_grad():
            plain = model(idx).float()
            padded = model(idx, pos, valid).float()
            model.setup_cache(3, 13)
            model(idx, pos, valid, start=0)
            nxt = idx[:, :1]
            step = model(nxt, pos[:, -1:] + 1, torch.cat([valid, valid[:, :1] | True], 1), start=12).float()
            model.clear_cache()
        return plain, padded[valid], step
    fast = run()
    reference_attention(model, True)
    slow = run()
    for a, b in zip(fast, slow):
        assert not a.isnan().any() and (a - b).abs().max() <= tol


def test_bf16_autocast_left_padded_has_no_nan_and_greedy_matches_fp32(tiny_ckpt):
    """Under bf16 autocast (train.py's dev evaluation on a GPU; here on the CPU),
    a left-padded batch has no NaN anywhere, padding rows included, in both
    attention paths, and greedy decoding gives the fp32 tokens."""
    model, _ = M.load(tiny_ckpt[0])
    idx, valid, pos = left_padded()
    prompts = [idx[b, valid[b]].tolist() for b in range(3)]
    want = M.generate(model, prompts, 8)
    for reference in (False, True):
        reference_attention(model, reference)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(idx, pos, valid)
            got = M.generate(model, prompts, 8)
        assert logits.isfinite().all()
        assert got == want


def test_generate_never_emits_ids_beyond_the_tokenizer(tiny_ckpt):
    """phi-2 has more embedding rows than tokens: with n_tokens, the rows past the
    tokenizer are never produced, greedy or sampled."""
    model, _ = M.load(tiny_ckpt[0])
    with torch.no_grad():
        model.lm_head.bias[300:] += 100.0                 # make the ids without a token the likeliest
    assert all(t >= 300 for t in M.generate(model, [[5, 6, 7]], 4)[0])
    assert all(t < 300 for t in M.generate(model, [[5, 6, 7]], 4, n_tokens=300)[0])
    sampled = M.generate(model, [[5, 6, 7]] * 4, 4, temperature=1.0, n_tokens=300,
                         generator=torch.Generator().manual_seed(0))
    assert all(t < 300 for row in sampled for t in row)
