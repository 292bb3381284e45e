"""Shared fixtures: tiny HF-layout phi checkpoints written by transformers itself."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
torch.set_num_threads(2)


def make_tokenizer(vocab_size=96):
    """A small byte-level BPE with <|endoftext|> at id 0, trained on a few lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = ["Question: What is 2 + 3?\nAnswer: 5\n\n", "Solve 3*y - 1 = -13 for y.\n"] * 10
    tok.train_from_iterator(lines, trainer)
    return tok


def write_hf_checkpoint(path, dtype=torch.float32, shard="200KB", seed=0, **cfg):
    """Random-init transformers.PhiForCausalLM, every parameter perturbed (so
    biases and LayerNorms are not trivially 0/1), saved with save_pretrained.
    Returns the reference as transformers itself loads it back, in fp32."""
    from transformers import PhiConfig, PhiForCausalLM
    torch.manual_seed(seed)
    config = PhiConfig(**cfg)
    hf = PhiForCausalLM(config)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    hf.to(dtype).save_pretrained(path, max_shard_size=shard)
    del hf
    tok = make_tokenizer(min(cfg.get("vocab_size", 96), 300))
    tok.save(os.path.join(path, "tokenizer.json"))
    return PhiForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=64, partial_rotary_factor=0.5,
            resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """(directory, reference HF model) for a 2-layer, 64-wide phi, sharded on disk."""
    path = str(tmp_path_factory.mktemp("tiny"))
    hf = write_hf_checkpoint(path, **TINY)
    return path, hf
