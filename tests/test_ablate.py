"""Zeroing ablations (knowpack.ablate): rows zeroed exactly as selected, weights restored, drops paired."""

from __future__ import annotations

import torch

from knowpack import ablate
from knowpack.methods.loki import arch
from knowpack.models import tiny_model


def _model():
    return tiny_model("llama", seed=2, vocab_size=64, hidden_size=32, layers=3)


def _scorer(model_ref):
    """Scores a model by how often its next-token argmax agrees with the base model's (per position)."""
    ids = torch.randint(0, 64, (8, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model_ref(input_ids=ids).logits.argmax(-1).flatten()

    def evaluate(model):
        with torch.no_grad():
            got = model(input_ids=ids).logits.argmax(-1).flatten()
        ok = (got == want).int().tolist()
        return {"agreement": {"accuracy": sum(ok) / len(ok), "correct": ok}}

    return evaluate


def test_zeroed_rows_zero_exactly_the_selection_and_restore_it():
    model = _model()
    before = [d.weight.detach().clone() for d in arch.down_projs(model)]
    layers = [[0, 5], [], [31]]
    with ablate.zeroed_rows(model, layers):
        for d, w, rows in zip(arch.down_projs(model), before, layers):
            keep = [i for i in range(32) if i not in rows]
            assert torch.all(d.weight[rows] == 0) and torch.equal(d.weight[keep], w[keep])
    assert all(torch.equal(d.weight, w) for d, w in zip(arch.down_projs(model), before))


def test_strategy_ablation_and_mlp_profile_measure_against_the_base():
    model = _model()
    evaluate = _scorer(model)
    scores = torch.randn(5, 3, 32, generator=torch.Generator().manual_seed(1))
    res = ablate.strategy_ablation(model, scores, 25.0, ("layer_balanced_highest", "layer_balanced_lowest",
                                                         "random"), evaluate)
    assert res["base"] == {"agreement": 1.0}
    for r in res["strategies"].values():
        assert r["zeroed_rows"] == 3 * 8 and r["rows_per_layer"] == [8, 8, 8]
        d = r["benchmarks"]["agreement"]
        assert d["absolute"] == 1.0 - r["scores"]["agreement"] and d["absolute_ci95"] is not None
        assert r["capability_loss_pct"] == 100 * d["relative"]
    assert evaluate(model)["agreement"]["accuracy"] == 1.0  # every ablation was undone
    profile = ablate.mlp_profile(model, evaluate)
    assert [x["layer"] for x in profile["layers"]] == [0, 1, 2]
    assert all(x["scores"]["agreement"] < 1.0 for x in profile["layers"])  # a whole MLP always matters here
    assert "capability loss" in ablate.format_table(res)
