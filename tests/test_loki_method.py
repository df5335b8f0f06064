"""LoKI implanting: only the selected rows train, exactly, and survive save/load/merge."""

from __future__ import annotations

import json

import pytest
import torch

from knowpack.adapters import load_adapted, merge_adapter
from knowpack.compose import ComposeSettings, compose
from knowpack.errors import KnowpackError
from knowpack.facts import Fact, FactSet
from knowpack.methods import count_trainable, get_method
from knowpack.methods.loki.layer import LokiLinear
from knowpack.methods.loki.method import LokiSettings
from knowpack.models import load_model, tiny_model
from knowpack.train import TrainSettings, train


def nodes_for(model, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    D, L = model.config.hidden_size, model.config.num_hidden_layers
    return [sorted(torch.randperm(D, generator=g)[:k].tolist()) for _ in range(L)]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_trainable_count_is_sum_of_selected_rows_times_dff(arch):
    model = tiny_model(arch)
    nodes = nodes_for(model, 3)
    prepared = get_method("loki").prepare(model, LokiSettings(), nodes=nodes)
    d_ff = model.config.intermediate_size
    assert count_trainable(prepared) == sum(len(r) for r in nodes) * d_ff
    lora = get_method("loki_lora").prepare(tiny_model(arch), LokiSettings(r=4), nodes=nodes)
    assert count_trainable(lora) == sum(len(r) * 4 + 4 * d_ff for r in nodes)


def test_loki_layer_matches_linear_and_grads_only_selected_columns():
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 8, bias=False)
    ref_w = base.weight.detach().clone()
    rows = [1, 5, 6]
    layer = LokiLinear(base, rows)
    x = torch.randn(3, 4, 16, requires_grad=True)
    y = layer(x)
    assert torch.allclose(y, x @ ref_w.T, atol=1e-6)
    g = torch.randn_like(y)
    y.backward(g)
    want = g[..., rows].reshape(-1, 3).T @ x.detach().reshape(-1, 16)
    assert torch.allclose(layer.rows_weight.grad, want, atol=1e-5)
    x2 = x.detach().clone().requires_grad_(True)
    (x2 @ ref_w.T).backward(g)
    assert torch.allclose(x.grad, x2.grad, atol=1e-5)  # input gradient is the full layer's
    assert base.weight.grad is None


def test_unsupported_architecture_and_bad_nodes():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(KnowpackError, match="llama"):
        get_method("loki").prepare(gpt2, LokiSettings(), nodes=[[0]])
    model = tiny_model("llama")
    with pytest.raises(KnowpackError, match="layer"):
        get_method("loki").prepare(model, LokiSettings(), nodes=[[0]])
    with pytest.raises(KnowpackError, match="out of range"):
        get_method("loki").prepare(model, LokiSettings(), nodes=[[0], [10_000]])
    with pytest.raises(KnowpackError, match="nodes"):
        get_method("loki").prepare(model, LokiSettings())


def _rows(tok, n=6):
    facts = FactSet([Fact(id=f"f{i}", question=f"Where does item {i} live?", answers=(f"box{i}",))
                     for i in range(n)])
    probe = [{"id": f.id, "category": "Unknown"} for f in facts]
    return compose(facts, probe, ComposeSettings(n_unknown=n, eval_size=0, retention_size=0), tok).rows


@pytest.mark.parametrize("name", ["loki", "loki_lora"])
def test_trained_then_merged_model_differs_from_base_only_in_selected_rows(name, tiny_dir, tmp_path):
    model, tok = load_model(tiny_dir, device="cpu", dtype="float32")
    nodes = nodes_for(model, 4, seed=1)
    settings = TrainSettings(method=name, epochs=3, batch_size=3, lr=1e-2, loki=LokiSettings(r=2))
    result = train(model, tok, _rows(tok), settings, tmp_path / "run", base_model=str(tiny_dir),
                   method_context={"nodes": nodes}, progress=False)
    adapter = tmp_path / "run" / "adapter"
    cfg = json.loads((adapter / "loki_config.json").read_text())
    assert cfg["layers"] == nodes and cfg["base_model_name_or_path"] == str(tiny_dir) and cfg["method"] == name
    x = tok(["Question: Where does item 2 live?\nAnswer:"], return_tensors="pt")
    with torch.no_grad():
        trained = result.model(**x).logits
    loaded, _, _ = load_adapted(str(tiny_dir), adapter, device="cpu", dtype="float32")
    with torch.no_grad():
        assert torch.allclose(loaded(**x).logits, trained, atol=1e-5)
    merged_dir = merge_adapter(str(tiny_dir), adapter, tmp_path / "merged", dtype="float32")
    from transformers import AutoModelForCausalLM

    merged = dict(AutoModelForCausalLM.from_pretrained(str(merged_dir)).named_parameters())
    base, _ = load_model(tiny_dir, device="cpu", dtype="float32")
    changed_rows = 0
    for pname, p in base.named_parameters():
        m = merged[pname]
        if pname.endswith("mlp.down_proj.weight"):
            layer = int(pname.split("layers.")[1].split(".")[0])
            keep = torch.ones(p.shape[0], dtype=torch.bool)
            keep[nodes[layer]] = False
            assert torch.equal(m[keep], p[keep]), pname
            changed_rows += int((m[~keep] != p[~keep]).any(dim=1).sum())
        else:
            assert torch.equal(m, p), pname
    assert changed_rows == sum(len(r) for r in nodes)  # every selected row moved
