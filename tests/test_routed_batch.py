"""A routed model answers a question the same alone and in a left-padded batch,
at token and at sequence level: padding never reaches the gate."""
import pytest
import torch

import adapters
import lora
import model as M
import router as R


def routed(path, tmp_path, level):
    """phi-tiny-shaped base with two random experts and a router with random gates."""
    model, _ = M.load(path, verbose=False)
    dirs = []
    for e in range(2):
        torch.manual_seed(e)
        lora.add_lora(model, r=2, alpha=4)
        for m in lora.lora_modules(model).values():
            torch.nn.init.normal_(m.lora_B.weight, std=0.2)
        dirs.append(str(tmp_path / f"e{e}"))
        adapters.save_adapter(model, dirs[-1], path)
        lora.remove_lora(model)
    adapters.load_experts(model, dirs)
    cfg = R.RouterConfig(experts=["a", "b"], groups=[[0], [1]], hidden_size=model.config.hidden_size,
                         n_layers=model.config.num_hidden_layers, level=level)
    router = R.Router(cfg, torch.zeros(2, model.config.hidden_size).numpy()).attach(model).eval()
    torch.manual_seed(3)
    for gate in router.gates:
        torch.nn.init.normal_(gate.U.weight, std=0.5)
        torch.nn.init.normal_(gate.V.weight, std=0.5)
    return model, router


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_routed_answers_do_not_depend_on_the_batch(tiny_ckpt, tmp_path, level):
    model, router = routed(tiny_ckpt[0], tmp_path, level)
    prompts = [[5, 9, 30, 41, 7, 12, 60], [8, 3], [100, 101, 102, 103]]
    prior = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    alone = []
    for i, p in enumerate(prompts):
        router.set_prior(prior[i:i + 1])
        with router.record() as rec:
            alone.append(M.generate(model, [p], 6)[0])
        alone_w = rec.weights()
        router.set_prior(prior)
        with router.record() as rec:
            batch = M.generate(model, prompts, 6)
        assert batch[i] == alone[-1]
        torch.testing.assert_close(rec.weights()[i], alone_w[0], atol=1e-5, rtol=1e-5)
