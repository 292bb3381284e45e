"""Issue 19: bad input never passes silently. Every file lora.py and router.py
read (adapter_config.json, adapter_model.safetensors and its base fingerprint,
router.json, router.safetensors) is a copy of a good one with one thing broken;
each must fail with the right exception, whose message starts with the file's
path and names the offending field or tensor. Tiny fixtures only (2 layers, 64 wide)."""
import contextlib
import copy
import glob
import json
import math
import os
import shutil
from fractions import Fraction

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from formats import adapters
import lora
from formats import routers
import model as M
import router as R
from conftest import ROOT
from formats.files import UserError, sha256

TARGETS = ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"]
A0 = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"    # (4, 64)
B1 = "base_model.model.model.layers.1.mlp.fc2.lora_B.weight"             # (64, 4)
DELETE = object()                          # "remove this key" in the tables below


@contextlib.contextmanager
def expect(error, path, *parts):
    """pytest.raises for `error` whose message starts with `path` and contains every part."""
    with pytest.raises(error) as info:
        yield info
    message = str(info.value)
    assert message.startswith(str(path)), f"message does not start with {path}: {message}"
    for part in parts:
        assert part in message, f"{part!r} not in: {message}"


def edit_json(path, key, value):
    """Set (or with DELETE remove) one key of a JSON object file."""
    with open(path) as f:
        obj = json.load(f)
    if value is DELETE:
        del obj[key]
    else:
        obj[key] = value
    with open(path, "w") as f:
        json.dump(obj, f)                  # NaN and Infinity are written as such


def edit_safetensors(path, edit):
    """Let edit(state) change a safetensors file; its metadata is kept."""
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
    state = load_file(path)
    edit(state)
    save_file(state, path, metadata=metadata)


# ---------------------------------------------------------------------------
# Fixtures: one tiny base, one adapter made on it, one router
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tiny_ckpt):
    return M.load(tiny_ckpt[0], verbose=False)[0]


@pytest.fixture(scope="module")
def good_adapter(base, tmp_path_factory):
    model = copy.deepcopy(base)
    lora.add_lora(model, r=4, alpha=8, targets=TARGETS)
    for m in lora.lora_modules(model).values():
        torch.nn.init.normal_(m.lora_B.weight, std=0.1)
    out = str(tmp_path_factory.mktemp("adapter"))
    adapters.save_adapter(model, out)
    return out


@pytest.fixture
def adapter(good_adapter, tmp_path):
    """A fresh copy of the good adapter, to break."""
    return shutil.copytree(good_adapter, str(tmp_path / "adapter"))


@pytest.fixture(scope="module")
def good_router(tmp_path_factory):
    cfg = R.RouterConfig(experts=["e0", "e1"], groups=[[0], [1]], hidden_size=64, n_layers=2)
    router = R.Router(cfg, np.random.default_rng(0).normal(size=(2, 64)).astype(np.float32))
    out = str(tmp_path_factory.mktemp("router"))
    routers.save_router(router, out)
    return out


@pytest.fixture
def router_dir(good_router, tmp_path):
    return shutil.copytree(good_router, str(tmp_path / "router"))


def test_good_files_load(base, good_adapter, good_router):
    config, layers = adapters.read_adapter(base, good_adapter)
    assert len(layers) == 12 and config["r"] == 4
    assert routers.load_router(good_router).cfg.groups == [[0], [1]]


# ---------------------------------------------------------------------------
# adapter_config.json
# ---------------------------------------------------------------------------

ADAPTER_CONFIG = [   # (key, bad value, what the message says)
    ("r", "8", "r is '8', expected a positive int"),
    ("r", 8.0, "r is 8.0, expected a positive int"),
    ("r", True, "r is True, expected a positive int"),
    ("r", 0, "r is 0, expected a positive int"),
    ("r", -4, "r is -4"),
    ("r", DELETE, "required key 'r' is missing"),
    ("lora_alpha", "16", "lora_alpha is '16', expected a finite number > 0"),
    ("lora_alpha", float("nan"), "lora_alpha is nan"),
    ("lora_alpha", float("inf"), "lora_alpha is inf"),
    ("lora_alpha", 0, "lora_alpha is 0"),
    ("lora_alpha", False, "lora_alpha is False"),
    ("lora_alpha", DELETE, "required key 'lora_alpha' is missing"),
    ("lora_dropout", 1.0, "lora_dropout is 1.0, expected a number in [0, 1)"),
    ("lora_dropout", -0.1, "lora_dropout is -0.1"),
    ("lora_dropout", "0.1", "lora_dropout is '0.1'"),
    ("lora_dropout", float("nan"), "lora_dropout is nan"),
    ("lora_dropout", None, "lora_dropout is None"),
    ("target_modules", [], "target_modules is [], expected a non-empty list"),
    ("target_modules", ["q_proj", 3], "target_modules is ['q_proj', 3]"),
    ("target_modules", "", "target_modules is ''"),
    ("target_modules", "(q_proj", "target_modules is '(q_proj', expected a valid regex"),
    ("target_modules", None, "target_modules is None"),
    ("target_modules", {"q_proj": 1}, "target_modules is {'q_proj': 1}"),
    ("target_modules", DELETE, "required key 'target_modules' is missing"),
    ("target_modules", ["nothing_here"], "target_modules ['nothing_here'] match no Linear"),
    ("peft_type", "IA3", "peft_type is 'IA3', expected 'LORA'"),
    ("peft_type", DELETE, "peft_type is None, expected 'LORA'"),
    ("task_type", "SEQ_CLS", "task_type is 'SEQ_CLS'; a phi expert is 'CAUSAL_LM'"),
    ("bias", "all", "bias 'all' is not supported"),
    ("use_dora", True, "use_dora=True is not supported"),
]


@pytest.mark.parametrize("key,value,message", ADAPTER_CONFIG,
                         ids=[f"{k}={'missing' if v is DELETE else v!r}" for k, v, _ in ADAPTER_CONFIG])
def test_adapter_config(base, adapter, key, value, message):
    path = os.path.join(adapter, adapters.CONFIG_NAME)
    edit_json(path, key, value)
    with expect(ValueError, path, message):
        adapters.read_adapter(base, adapter)


@pytest.mark.parametrize("text,message", [("[1, 2]", "expected a JSON object, got list"),
                                          ('{"r": 4,', "not valid JSON"),
                                          ("\udcff", "not valid JSON")], ids=["list", "truncated", "binary"])
def test_adapter_config_not_an_object(base, adapter, text, message):
    path = os.path.join(adapter, adapters.CONFIG_NAME)
    with open(path, "wb") as f:
        f.write(text.encode("utf-8", "surrogateescape"))
    with expect(ValueError, path, message):
        adapters.read_adapter(base, adapter)


PEFT_FORMS = [("target_modules", r"model\.layers\.\d+\..*(q_proj|k_proj|v_proj|dense|fc1|fc2)"),
              ("lora_alpha", 8.0), ("lora_dropout", 0.05)]


@pytest.mark.parametrize("key,value", PEFT_FORMS,
                         ids=["target_modules-regex", "lora_alpha-float", "lora_dropout-0.05"])
def test_adapter_config_forms_peft_allows(base, adapter, key, value):
    edit_json(os.path.join(adapter, adapters.CONFIG_NAME), key, value)
    config, layers = adapters.read_adapter(base, adapter)
    assert len(layers) == 12 and config[key] == value


def test_missing_adapter_files(base, adapter):
    for name in (adapters.WEIGHTS_NAME, adapters.CONFIG_NAME):
        path = os.path.join(adapter, name)
        os.remove(path)
        with expect(UserError, path, "not found"):
            adapters.read_adapter(base, adapter)


# ---------------------------------------------------------------------------
# adapter_model.safetensors
# ---------------------------------------------------------------------------


def put(key, value):
    """An edit that sets element [0, 0] of tensor `key`."""
    def edit(state):
        state[key][0, 0] = value
    return edit


def retype(key, dtype):
    def edit(state):
        state[key] = state[key].to(dtype)
    return edit


def remove(key):
    def edit(state):
        del state[key]
    return edit


ADAPTER_TENSORS = [   # (edit, tensor the message names, what it says)
    (put(A0, float("nan")), A0, "1 NaN and 0 inf values, expected finite"),
    (put(B1, float("inf")), B1, "0 NaN and 1 inf values"),
    (put(B1, float("-inf")), B1, "0 NaN and 1 inf values"),
    (retype(A0, torch.int32), A0, "dtype torch.int32, expected a floating-point dtype"),
    (retype(B1, torch.bool), B1, "dtype torch.bool"),
    (lambda s: s.update({A0: s[A0][:3]}), A0, "has shape (3, 64), expected (4, 64)"),
    (lambda s: s.update({B1: s[B1].T.contiguous()}), B1, "has shape (4, 64), expected (64, 4)"),
    (remove(B1), B1, "missing 1 tensors"),
    (lambda s: s.update({A0 + ".extra": s[A0].clone()}), A0 + ".extra", "unexpected 1 tensors"),
]


@pytest.mark.parametrize("edit,key,message", ADAPTER_TENSORS,
                         ids=["nan", "inf", "-inf", "int32", "bool", "rows", "transposed", "missing",
                              "unexpected"])
def test_adapter_tensors(base, adapter, edit, key, message):
    path = os.path.join(adapter, adapters.WEIGHTS_NAME)
    edit_safetensors(path, edit)
    with expect(ValueError, path, key, message):
        adapters.read_adapter(base, adapter)


@pytest.mark.parametrize("scale", [1e30, 1e6])
def test_adapter_update_far_larger_than_its_base_weight(base, adapter, scale):
    """Finite but huge (every answer would be NaN): refused, naming the layer."""
    path = os.path.join(adapter, adapters.WEIGHTS_NAME)
    edit_safetensors(path, lambda s: s.update({B1: s[B1] * scale}))
    layer = B1.removeprefix(adapters.PEFT_PREFIX).removesuffix(".lora_B.weight")
    with expect(ValueError, path, f"the update of {layer} (scaling * lora_B @ lora_A) has norm",
                "times its base weight's"):
        adapters.read_adapter(base, adapter)


def test_half_precision_adapter_tensors_load(base, adapter):
    path = os.path.join(adapter, adapters.WEIGHTS_NAME)
    edit_safetensors(path, lambda s: s.update({k: v.to(torch.bfloat16) for k, v in s.items()}))
    assert len(adapters.read_adapter(base, adapter)[1]) == 12


def test_truncated_adapter_weights(base, adapter):
    path = os.path.join(adapter, adapters.WEIGHTS_NAME)
    with open(path, "r+b") as f:
        f.truncate(100)
    with expect(ValueError, path, "truncated or corrupt"):
        adapters.read_adapter(base, adapter)


# ---------------------------------------------------------------------------
# The base fingerprint
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("tensor", ["model.layers.1.mlp.fc2.weight", "model.layers.0.input_layernorm.bias",
                                    "model.layers.1.self_attn.v_proj.weight", "lm_head.bias"])
def test_base_that_differs_in_one_tensor_is_refused(base, good_adapter, tensor):
    """Same config, same embedding (the old fingerprint's only probe), one other tensor re-drawn."""
    other = copy.deepcopy(base)
    with torch.no_grad():
        p = other.get_parameter(tensor)
        p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(5)) * p.std().clamp(min=0.02))
    path = os.path.join(good_adapter, adapters.WEIGHTS_NAME)
    with expect(ValueError, path, "another base model", f"the base's {tensor} differs"):
        adapters.read_adapter(other, good_adapter)
    assert adapters.read_adapter(other, good_adapter, check_base=False)        # on purpose: allowed


def test_base_of_other_shape_is_refused(good_adapter):
    wider = M.PhiForCausalLM(M.PhiConfig(vocab_size=320, hidden_size=128, intermediate_size=256,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         max_position_embeddings=64, partial_rotary_factor=0.5))
    path = os.path.join(good_adapter, adapters.WEIGHTS_NAME)
    with expect(ValueError, path, "another base model: hidden_size 64 (this model: 128)"):
        adapters.read_adapter(wider, good_adapter)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_same_base_in_half_precision_is_accepted_both_ways(tiny_ckpt, base, good_adapter, tmp_path, dtype):
    """An fp32-made adapter loads onto the base in bf16/fp16, and one made on the
    half-precision base loads onto the fp32 base."""
    half = M.load(tiny_ckpt[0], dtype=dtype, verbose=False)[0]
    assert len(adapters.read_adapter(half, good_adapter)[1]) == 12
    lora.add_lora(half, r=2, alpha=4, targets=("fc1",))
    adapters.save_adapter(half, str(tmp_path / "half"))
    assert len(adapters.read_adapter(base, str(tmp_path / "half"))[1]) == 2


def set_fingerprint(adapter, text):
    path = os.path.join(adapter, adapters.WEIGHTS_NAME)
    state = load_file(path)
    save_file(state, path, metadata={"format": "pt", adapters.FINGERPRINT_KEY: text})
    return path


def test_fingerprint_of_the_first_values_is_refused(base, adapter):
    """The fingerprint format that sampled only the first 8 values of the first
    tensor is gone (every shipped adapter was saved with probes of every tensor)."""
    path = set_fingerprint(adapter, json.dumps({"probe_tensor": "model.embed_tokens.weight", "probe": [0.0] * 8}))
    with expect(ValueError, path, "is malformed"):
        adapters.read_adapter(base, adapter)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"probes": {"lm_head.bias": ["a"]}}',
                                  '{"hidden_size": 64}'],
                         ids=["not-json", "list", "probe-strings", "no-probes"])
def test_malformed_fingerprint(base, adapter, text):
    path = set_fingerprint(adapter, text)
    with expect(ValueError, path, adapters.FINGERPRINT_KEY, "malformed"):
        adapters.read_adapter(base, adapter)


SHIPPED = os.path.join(ROOT, "checkpoints")


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHIPPED, "phi-tiny-moe", "experts")),
                    reason="no shipped checkpoints")
def test_shipped_adapters_in_the_old_format_load_onto_phi_tiny():
    model = M.load(os.path.join(SHIPPED, "phi-tiny"), dtype="bfloat16", verbose=False)[0]
    dirs = list(adapters.expert_dirs(os.path.join(SHIPPED, "phi-tiny-moe", "experts")).values())
    assert len(adapters.load_experts(model, dirs)) == 6 * model.config.num_hidden_layers
    assert routers.load_router(os.path.join(SHIPPED, "phi-tiny-moe", "router")).cfg.n_layers == 8


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHIPPED, "phi-tiny-study")), reason="no kept study")
def test_every_kept_adapter_keeps_its_probe_positions():
    """The fingerprints of all the adapters kept in checkpoints/ were saved with
    float32 linspace positions; each still matches phi-tiny, value for value."""
    model = M.load(os.path.join(SHIPPED, "phi-tiny"), verbose=False)[0]
    paths = sorted(glob.glob(os.path.join(SHIPPED, "**", adapters.WEIGHTS_NAME), recursive=True))
    assert len(paths) > 40
    for path in paths:
        with safe_open(path, framework="pt") as f:
            adapters._check_fingerprint(model, f.metadata()[adapters.FINGERPRINT_KEY], path)


@pytest.mark.parametrize("n", [2 ** 24, 2 ** 24 + 1, 51200 * 640, 51200 * 2560, 2 ** 31 + 3])
def test_probe_positions_are_exact_integers_at_phi2_sizes(n):
    """Evenly spaced and in range at phi-2's sizes: float32 linspace put the last
    position of a 51200 x 640 embedding at 32768000, one past its end."""
    at = adapters.probe_positions(n, 8).tolist()
    assert at == [int(Fraction(i * (n - 1), 7) + Fraction(1, 2)) for i in range(8)]   # rounded half up
    assert at[0] == 0 and at[-1] == n - 1


@pytest.mark.parametrize("n", [1000, 2 ** 24 - 1, 14167048])
def test_probe_positions_below_2_24_are_the_saved_ones(n):
    """Below 2**24 the positions are float32 linspace's, with which every kept
    fingerprint was saved, even where they are not the exact ones (14167048:
    float32 gives 8095456 for position 4, exactly 8095455.43)."""
    at = adapters.probe_positions(n, 8).tolist()
    assert at == torch.linspace(0, n - 1, 8).round().long().tolist()
    if n == 14167048:
        assert at[4] == 8095456 != int(Fraction(4 * (n - 1), 7) + Fraction(1, 2))


def test_probe_positions_worked_example_and_small_tensors():
    assert adapters.probe_positions(100, 8).tolist() == [0, 14, 28, 42, 57, 71, 85, 99]
    assert adapters.probe_positions(5, 8).tolist() == [0, 1, 2, 3, 4]
    assert adapters.probe_positions(1, 8).tolist() == [0]
    big = torch.arange(2 ** 24 + 5, dtype=torch.float64)          # its values are its positions
    assert adapters.probe(big).tolist() == [float(i) for i in adapters.probe_positions(big.numel(), 8)]


# ---------------------------------------------------------------------------
# Routing weights
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def experts_model(base, good_adapter):
    model = copy.deepcopy(base)
    adapters.load_experts(model, [good_adapter, good_adapter])
    return model


BAD_WEIGHTS = [torch.tensor([0.5, float("nan")]), torch.tensor([[float("inf"), 0.0]]),
               torch.full((1, 3, 2), float("-inf")), torch.tensor([1, 0]), torch.tensor([0.2, 0.3, 0.5])]
BAD_WEIGHTS_SAY = ["contain NaN or inf", "contain NaN or inf", "contain NaN or inf",
                   "must be a floating-point tensor", "expected (E,), (B, E) or (B, T, E) with E=2"]


@pytest.mark.parametrize("w,message", list(zip(BAD_WEIGHTS, BAD_WEIGHTS_SAY)),
                         ids=["nan", "inf", "-inf-per-token", "ints", "three-experts"])
def test_bad_routing_weights(experts_model, w, message):
    with expect(ValueError, "set_expert_weights", "routing weights", message):
        lora.set_expert_weights(experts_model, w)
    fc1 = experts_model.model.layers[0].mlp.fc1
    fc1.weights = w
    if w.dim() == 1 and w.is_floating_point() and w.numel() == 2:
        with expect(ValueError, "MultiLoRALinear.merge", message):
            fc1.merge()
    lora.set_expert_weights(experts_model, None)


# ---------------------------------------------------------------------------
# router.json
# ---------------------------------------------------------------------------

ROUTER_JSON = [   # (key, bad value, what the message says); the router has 2 experts, 2 layers
    ("temprature", 1.0, "unknown field(s) ['temprature']"),
    ("experts", DELETE, "required field(s) ['experts'] missing"),
    ("experts", "e0", "field 'experts' is 'e0', expected a non-empty list of distinct names"),
    ("experts", ["e0", "e0"], "field 'experts'"),
    ("experts", [], "field 'experts'"),
    ("groups", [[0], [0]], "field 'groups' is [[0], [0]], expected a partition of the expert indices 0..1"),
    ("groups", [[0]], "field 'groups' is [[0]], expected a partition"),
    ("groups", [[0, 1], []], "field 'groups' is [[0, 1], []], expected a list of non-empty lists"),
    ("groups", [["0"], [1]], "field 'groups'"),
    ("groups", [[0], [1.0]], "field 'groups'"),
    ("hidden_size", "64", "field 'hidden_size' is '64', expected a positive int"),
    ("hidden_size", 0, "field 'hidden_size' is 0"),
    ("n_layers", 2.0, "field 'n_layers' is 2.0, expected a positive int"),
    ("n_layers", True, "field 'n_layers' is True"),
    ("level", "tokens", "field 'level' is 'tokens', expected 'token' or 'sequence'"),
    ("prior", "centriod", "field 'prior' is 'centriod', expected 'centroid', 'learned' or 'none'"),
    ("top_k", 3, "field 'top_k' is 3, expected 0..2 (the number of experts)"),
    ("top_k", -1, "field 'top_k' is -1, expected an int >= 0"),
    ("top_k", 1.5, "field 'top_k' is 1.5"),
    ("temperature", 0, "field 'temperature' is 0, expected a finite number > 0"),
    ("temperature", -1.0, "field 'temperature' is -1.0"),
    ("temperature", "1", "field 'temperature' is '1'"),
    ("tau", float("nan"), "field 'tau' is nan, expected a finite number > 0"),
    ("tau", float("inf"), "field 'tau' is inf"),
    ("entropy_weight", float("nan"), "field 'entropy_weight' is nan, expected a finite number"),
    ("balance_weight", -0.1, "field 'balance_weight' is -0.1, expected a finite number >= 0"),
    ("embed_layer", 3, "field 'embed_layer' is 3, expected 0..2 (n_layers)"),
    ("rank1", 3, "field 'rank1' is 3, expected 0 or 2"),
    ("rank1_alpha", 0.0, "field 'rank1_alpha' is 0.0"),
    ("targets", [], "field 'targets' is []"),
    ("experts_sha256", [], "field 'experts_sha256' is [], expected an object of expert name -> sha256"),
    ("experts_sha256", {"e0": "0"}, "field 'experts_sha256' names ['e0'], expected one entry per expert of "
                                    "'experts' (['e0', 'e1']), or none for rank-1 experts"),
    ("expert_dirs", "../experts", "field 'expert_dirs' is '../experts', expected an object of expert name -> "
                                  "its adapter folder"),
    ("expert_dirs", {"e0": "../e0", "e1": ""}, "field 'expert_dirs'"),
    ("expert_dirs", {"e0": "../e0", "e1": "../e1", "e2": "../e2"}, "field 'expert_dirs' names ['e0', 'e1', 'e2']"),
]


@pytest.mark.parametrize("key,value,message", ROUTER_JSON,
                         ids=[f"{k}={'missing' if v is DELETE else v!r}" for k, v, _ in ROUTER_JSON])
def test_router_json(router_dir, key, value, message):
    path = os.path.join(router_dir, "router.json")
    edit_json(path, key, value)
    with expect(ValueError, path, message):
        routers.read_config(router_dir)
    with expect(ValueError, path, message):
        routers.load_router(router_dir)


def test_router_json_embed_layer_is_tied_to_the_centroids(router_dir):
    """The centroids were made at embed_layer 0: router.json saying 1 is refused,
    though 1 is a valid layer; temperature, for one, stays free to edit."""
    path = os.path.join(router_dir, "router.json")
    edit_json(path, "temperature", 2.0)
    assert routers.load_router(router_dir).cfg.temperature == 2.0
    edit_json(path, "embed_layer", 1)
    with expect(ValueError, path, "field 'embed_layer' is 1, but the centroids in", "were made at layer 0"):
        routers.load_router(router_dir)


@pytest.mark.parametrize("text,message", [("[]", "expected a JSON object, got list"), ("{", "not valid JSON")],
                         ids=["list", "truncated"])
def test_router_json_not_an_object(router_dir, text, message):
    path = os.path.join(router_dir, "router.json")
    with open(path, "w") as f:
        f.write(text)
    with expect(ValueError, path, message):
        routers.read_config(router_dir)


def test_router_experts_are_the_adapters_router_json_names(good_adapter, good_router, tmp_path):
    """router.json names each expert's folder (from its own folder) and sha256: the
    experts are found there whatever else lies beside them; a changed or missing
    one is named with the flag that points at the right one; a router that names
    none is refused."""
    experts = tmp_path / "experts"
    dirs = {name: shutil.copytree(good_adapter, str(experts / name)) for name in ("e0", "e1")}
    os.makedirs(experts / "half-trained")              # no adapter in it, and not this router's
    cfg = R.RouterConfig(experts=["e0", "e1"], groups=[[0], [1]], hidden_size=64, n_layers=2,
                         expert_dirs=dirs, experts_sha256=adapters.experts_sha256(dirs))
    out = str(tmp_path / "routers" / "r")
    routers.save_router(R.Router(cfg, np.zeros((2, 64), np.float32)), out)
    assert json.load(open(os.path.join(out, "router.json")))["expert_dirs"] == {"e0": "../../experts/e0",
                                                                                "e1": "../../experts/e1"}
    assert routers.router_experts(out, routers.read_config(out)) == dirs
    weights = os.path.join(dirs["e1"], "adapter_model.safetensors")
    edit_safetensors(weights, lambda state: state[A0].mul_(2))
    with expect(UserError, weights, f"not the adapter that {out} was trained over as its expert 'e1' (router.json: "
                "experts_sha256); give the folder that holds its experts with --experts DIR"):
        routers.router_experts(out, routers.read_config(out))
    os.remove(weights)
    with expect(UserError, weights, f"not found: {out} routes over the expert 'e1' there; give the folder that "
                "holds its experts with --experts DIR"):
        routers.router_experts(out, routers.read_config(out))
    with expect(UserError, os.path.join(good_router, "router.json"), "field 'experts_sha256' is empty"):
        routers.router_experts(good_router, routers.read_config(good_router), str(experts))


def test_missing_router_files(router_dir):
    for name in ("router.safetensors", "router.json"):
        path = os.path.join(router_dir, name)
        os.remove(path)
        with expect(UserError, path, "not found"):
            routers.load_router(router_dir)


# ---------------------------------------------------------------------------
# router.safetensors
# ---------------------------------------------------------------------------


def reseal(router_dir):
    """Make router.json name the edited weights, as if they had been saved so (a
    training run that wrote NaN, say): the checks behind the set's hash then speak."""
    path = os.path.join(router_dir, "router.json")
    cfg = json.load(open(path))
    cfg["weights_sha256"] = sha256(os.path.join(router_dir, "router.safetensors"))
    json.dump(cfg, open(path, "w"))


def put_flat(key, value):
    def edit(state):
        state[key].view(-1)[0] = value
    return edit


ROUTER_TENSORS = [   # (edit, tensor the message names, what it says)
    (put_flat("gates.0.U.weight", float("nan")), "gates.0.U.weight", "1 NaN and 0 inf values"),
    (put_flat("mix", float("inf")), "mix", "0 NaN and 1 inf values"),
    (put_flat("task.centroids", float("nan")), "task.centroids", "1 NaN"),
    (lambda s: s.update({"task.scale": torch.tensor(float("nan"))}), "task.scale", "1 NaN"),
    (remove("task.centroids"), "task.centroids", "missing 1 tensors"),
    (remove("gates.1.V.bias"), "gates.1.V.bias", "missing 1 tensors"),
    (lambda s: s.update({"gates.2.U.weight": s["gates.0.U.weight"].clone()}), "gates.2.U.weight",
     "unexpected 1 tensors"),
    (lambda s: s.update({"gates.1.V.weight": torch.zeros(3, 64)}), "gates.1.V.weight",
     "has shape (3, 64), expected (2, 64)"),
    (retype("mix", torch.int64), "mix", "dtype torch.int64, expected a floating-point dtype"),
    (lambda s: s["task.centroids"].mul_(1e30), "task prior (centroid)", "not finite"),
    (lambda s: s.update({"task.scale": torch.tensor(1e-45)}), "task prior (centroid)", "not finite"),
    (lambda s: s["gates.1.U.weight"].fill_(3e38), "gate of layer 1", "gates.1.* overflow"),
]


@pytest.mark.parametrize("edit,key,message", ROUTER_TENSORS,
                         ids=["nan-gate", "inf-mix", "nan-centroid", "nan-scale", "no-centroids", "no-bias",
                              "extra-layer", "shape", "int-mix", "huge-centroids",
                              "tiny-scale", "huge-gate"])
def test_router_tensors(router_dir, edit, key, message):
    path = os.path.join(router_dir, "router.safetensors")
    edit_safetensors(path, edit)
    reseal(router_dir)
    with expect(ValueError, path, key, message):
        routers.load_router(router_dir)


def test_truncated_router_weights(router_dir):
    path = os.path.join(router_dir, "router.safetensors")
    with open(path, "r+b") as f:
        f.truncate(50)
    reseal(router_dir)
    with expect(ValueError, path, "truncated or corrupt"):
        routers.load_router(router_dir)


# ---------------------------------------------------------------------------
# Routers built from Python (train.py --router turns its flags into a RouterConfig)
# ---------------------------------------------------------------------------

PYTHON_SETTINGS = [("temperature", 0.0), ("temperature", -2.0), ("temperature", math.nan),
                   ("temperature", math.inf), ("tau", 0.0), ("tau", math.nan), ("tau", -math.inf),
                   ("top_k", 5), ("level", "seq")]


@pytest.mark.parametrize("key,value", PYTHON_SETTINGS, ids=[f"{k}={v}" for k, v in PYTHON_SETTINGS])
def test_router_from_python(key, value):
    cfg = R.RouterConfig(experts=["e0", "e1"], groups=[[0], [1]], hidden_size=64, n_layers=2, **{key: value})
    with expect(ValueError, "RouterConfig", f"field {key!r} is {value!r}"):
        R.make_router(cfg, np.zeros((2, 64), np.float32))


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf])
def test_gate_and_task_router_from_python(value):
    with expect(ValueError, "TaskRouter", f"tau is {value!r}, expected a finite number > 0"):
        R.TaskRouter(np.zeros((2, 8), np.float32), tau=value)
    with expect(ValueError, "GroupedGate", f"temperature is {value!r}, expected a finite number > 0"):
        R.GroupedGate(8, R.membership([[0], [1]], 2), temperature=value)


def test_router_files_from_two_saves_are_refused(tmp_path):
    """save_router writes the weights, then router.json with their hash: weights
    from another save (a crash between the two writes) are refused, while
    router.json itself may be edited by hand."""
    cfg = R.RouterConfig(experts=["a", "b"], groups=[[0], [1]], hidden_size=8, n_layers=2)
    routers.save_router(R.Router(cfg, np.zeros((2, 8), np.float32)), str(tmp_path / "one"))
    routers.save_router(R.Router(cfg, np.ones((2, 8), np.float32)), str(tmp_path / "two"))
    edited = json.load(open(tmp_path / "one" / "router.json"))
    edited["temperature"] = 2.0
    json.dump(edited, open(tmp_path / "one" / "router.json", "w"), indent=1)
    assert routers.load_router(str(tmp_path / "one")).cfg.temperature == 2.0     # hand edits are fine
    shutil.copy(tmp_path / "two" / "router.safetensors", tmp_path / "one" / "router.safetensors")
    with pytest.raises(ValueError, match="not the weights that router.json was saved with"):
        routers.load_router(str(tmp_path / "one"))


@pytest.mark.parametrize("alpha, message", [
    ("sixteen", "metadata 'skill_moe.lora_alpha' is 'sixteen', expected a number"),
    ("32", "saved with lora_alpha 32, but adapter_config.json says")])
def test_adapter_alpha_metadata(base, adapter, alpha, message):
    """lora_alpha rides in the weights' metadata: unreadable or unlike the config's, the adapter is refused."""
    path = os.path.join(adapter, "adapter_model.safetensors")
    with safe_open(path, "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    save_file(tensors, path, metadata={**metadata, adapters.ALPHA_KEY: alpha})
    with expect(ValueError, path, message):
        adapters.read_adapter(base, adapter)
