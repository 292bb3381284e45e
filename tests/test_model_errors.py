"""model.load and model.generate on bad input: each must fail with a clear error
that names the offending file, tensor or field and says what was expected,
never with a bare traceback from inside torch or safetensors.

Every bad checkpoint is a copy of the good tiny one (sharded, from conftest),
or of a single-file version of it, with one thing broken."""
import json
import os
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

import model as M
from formats.files import UserError

FC1_BIAS = "model.layers.1.mlp.fc1.bias"    # shape (256,) in the tiny config


@pytest.fixture
def sharded(tiny_ckpt, tmp_path):
    """A copy of the tiny checkpoint: config.json, index, several shards, tokenizer.json."""
    return shutil.copytree(tiny_ckpt[0], str(tmp_path / "sharded"))


@pytest.fixture
def single(sharded):
    """The same weights as one model.safetensors file, as small checkpoints ship."""
    index = os.path.join(sharded, "model.safetensors.index.json")
    shards = set(json.load(open(index))["weight_map"].values())
    state = {}
    for shard in shards:
        state.update(load_file(os.path.join(sharded, shard)))
        os.remove(os.path.join(sharded, shard))
    os.remove(index)
    save_file(state, os.path.join(sharded, "model.safetensors"), metadata={"format": "pt"})
    M.load(sharded, verbose=False)    # still a good checkpoint
    return sharded


def weight_file(ckpt, tensor=FC1_BIAS):
    """The file that holds `tensor` in either layout."""
    index = os.path.join(ckpt, "model.safetensors.index.json")
    if os.path.exists(index):
        return os.path.join(ckpt, json.load(open(index))["weight_map"][tensor])
    return os.path.join(ckpt, "model.safetensors")


def rewrite(path, edit):
    """Load a safetensors file, let edit(state) change it, save it back."""
    state = load_file(path)
    edit(state)
    save_file(state, path, metadata={"format": "pt"})


def raises(error, *parts):
    """pytest.raises for `error` whose message contains every one of `parts`, in order."""
    return pytest.raises(error, match=".*".join(re.escape(p) for p in parts))


# --- the directory and its files ---------------------------------------------


def test_missing_directory(tmp_path):
    path = str(tmp_path / "nowhere")
    with raises(UserError, path, "checkpoint directory not found"):
        M.load(path)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json"])
def test_missing_config_or_tokenizer(single, name):
    os.remove(os.path.join(single, name))
    with raises(UserError, single, f"{name} is missing"):
        M.load(single)


def test_missing_weights(sharded):
    for f in os.listdir(sharded):
        if "safetensors" in f:
            os.remove(os.path.join(sharded, f))
    with raises(UserError, sharded, "no model.safetensors or model.safetensors.index.json"):
        M.load(sharded)


def test_config_missing_a_field(single):
    path = os.path.join(single, "config.json")
    cfg = json.load(open(path))
    del cfg["hidden_size"]
    json.dump(cfg, open(path, "w"))
    with raises(ValueError, path, "config field 'hidden_size' is missing"):
        M.load(single)


def test_config_token_id_outside_the_vocabulary(single):
    path = os.path.join(single, "config.json")
    cfg = json.load(open(path))
    cfg["eos_token_id"] = cfg["vocab_size"]
    json.dump(cfg, open(path, "w"))
    with raises(ValueError, path, "config field 'eos_token_id' is", "expected an id below vocab_size"):
        M.load(single)


def test_config_not_json(single):
    path = os.path.join(single, "config.json")
    with open(path, "w") as f:
        f.write('{"model_type": "phi",')
    with raises(ValueError, path, "not valid JSON"):
        M.load(single)


# --- tensors that do not match the config --------------------------------------


def test_missing_tensor(single):
    path = weight_file(single)
    rewrite(path, lambda state: state.pop(FC1_BIAS))
    with raises(ValueError, path, "do not match the 33 that config.json describes",
                f"missing tensors ['{FC1_BIAS}']"):
        M.load(single)


def test_tensor_listed_in_index_but_not_in_its_shard(sharded):
    path = weight_file(sharded)
    rewrite(path, lambda state: state.pop(FC1_BIAS))
    with raises(ValueError, path, FC1_BIAS, "listed for this file in model.safetensors.index.json"):
        M.load(sharded)


def test_unexpected_tensor(single):
    path = weight_file(single)
    rewrite(path, lambda state: state.update({"model.layers.1.mlp.fc3.bias": torch.zeros(256)}))
    with raises(ValueError, path, "config.json describes",
                "unexpected tensors ['model.layers.1.mlp.fc3.bias']"):
        M.load(single)


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_wrong_shape(layout, request):
    ckpt = request.getfixturevalue(layout)
    path = weight_file(ckpt)
    rewrite(path, lambda state: state.update({FC1_BIAS: torch.zeros(255)}))
    with raises(ValueError, path, f"tensor {FC1_BIAS} has shape (255,), expected (256,)"):
        M.load(ckpt)


def test_old_phi_msft_layout(single):
    path = os.path.join(single, "model.safetensors")
    save_file({"transformer.embd.wte.weight": torch.zeros(320, 64),
               "transformer.h.0.mixer.Wqkv.weight": torch.zeros(192, 64),
               "transformer.h.0.mixer.Wqkv.bias": torch.zeros(192)}, path)
    with raises(ValueError, path, "old 'phi-msft' layout", "model.layers.N.self_attn.q_proj"):
        M.load(single)


# --- damaged files ---------------------------------------------------------------


def truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def garble(path):
    n = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(0),
                              dtype=torch.uint8).numpy().tobytes())


@pytest.mark.parametrize("damage", [truncate, garble], ids=["truncated", "garbage"])
@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_damaged_weight_file(layout, damage, request):
    ckpt = request.getfixturevalue(layout)
    path = weight_file(ckpt)
    damage(path)
    with raises(ValueError, path, "truncated or corrupt safetensors file"):
        M.load(ckpt)


def test_shard_missing(sharded):
    path = weight_file(sharded)
    os.remove(path)
    with raises(UserError, path, "listed for this checkpoint is missing"):
        M.load(sharded)


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_weight_file_that_is_a_directory(layout, request):
    ckpt = request.getfixturevalue(layout)
    path = weight_file(ckpt)
    os.remove(path)
    os.mkdir(path)
    with raises(ValueError, path, "is a directory, expected a safetensors file"):
        M.load(ckpt)


def test_index_or_config_that_is_a_directory(sharded):
    index = os.path.join(sharded, "model.safetensors.index.json")
    os.remove(index)
    os.mkdir(index)
    with raises(ValueError, index, "not a safetensors index"):
        M.load(sharded)
    os.remove(os.path.join(sharded, "config.json"))
    os.mkdir(os.path.join(sharded, "config.json"))
    with raises(UserError, sharded, "config.json is missing (expected a file)"):
        M.load(sharded)


def test_index_without_weight_map(sharded):
    path = os.path.join(sharded, "model.safetensors.index.json")
    with open(path, "w") as f:
        json.dump({"metadata": {}}, f)
    with raises(ValueError, path, "'weight_map'"):
        M.load(sharded)


# --- tokenizer -------------------------------------------------------------------


def test_tokenizer_larger_than_embedding(single):
    path = os.path.join(single, "tokenizer.json")
    tok = Tokenizer.from_file(path)
    tok.add_tokens([f"<extra{i}>" for i in range(321 - tok.get_vocab_size())])
    tok.save(path)
    with raises(ValueError, path, "321 tokens, more than the 320 embedding rows"):
        M.load(single)


# --- generate's arguments --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tiny_ckpt):
    return M.load(tiny_ckpt[0], verbose=False)[0]


def test_prompt_longer_than_context(tiny_model):
    P = tiny_model.config.max_position_embeddings                # 64
    with raises(ValueError, "prompt 1 has 65 tokens", f"max_position_embeddings={P}"):
        M.generate(tiny_model, [[1, 2], [1] * (P + 1)], 4)
    assert M.generate(tiny_model, [[1] * P], 4) == [[]]           # full context: nothing to add


def test_empty_prompt(tiny_model):
    with raises(ValueError, "prompt 1 is empty"):
        M.generate(tiny_model, [[1, 2], []], 4)
    with raises(ValueError, "no prompts"):
        M.generate(tiny_model, [], 4)


def test_token_id_outside_vocabulary(tiny_model):
    with raises(ValueError, "prompt 0 has token ids from 1 to 320", "outside the vocabulary 0..319"):
        M.generate(tiny_model, [[1, 320]], 4)
