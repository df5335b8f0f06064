"""Zeroing ablations (knowpack.ablate): rows zeroed exactly as selected, weights restored, drops paired."""

from __future__ import annotations

import pytest
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


def _trace_setup():
    from knowpack.facts.model import Fact
    from knowpack.models import tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_model("llama", seed=2, vocab_size=len(tok), layers=3)
    facts = [Fact(id=f"f{i}", question=f"Where was {name} born?", subject=name, answers=("x",))
             for i, name in enumerate(["Alma Verno", "Bertil Quon", "Cato Ruhm"])]
    facts.append(Fact(id="nosubj", question="Where was she born?", subject="Dana Wirt", answers=("x",)))
    return model, tok, facts


def test_causal_trace_without_noise_changes_nothing_and_skips_absent_subjects():
    model, tok, facts = _trace_setup()
    for state, positions in (("mlp", "last"), ("hidden", "all"), ("attn", "end")):
        res = ablate.causal_trace(model, tok, facts, noise_scale=0.0, noise_samples=2, state=state, positions=positions)
        assert res["facts"] == 3 and res["skipped_subject_not_in_prompt"] == 1
        assert abs(res["p_corrupted"]["mean"] - res["p_clean"]["mean"]) < 1e-6
        assert all(abs(e["mean"]) < 1e-6 for e in res["indirect_effect_by_layer"])


def test_causal_trace_restores_the_named_layer_only():
    model, tok, facts = _trace_setup()
    res = ablate.causal_trace(model, tok, facts[:3], noise_samples=3, state="mlp", positions="all", seed=1)
    assert res["p_corrupted"]["mean"] != res["p_clean"]["mean"]  # the noise does corrupt
    effect = [e["mean"] for e in res["indirect_effect_by_layer"]]
    # the last layer's state at the subject is read by nothing downstream (only the last position's is):
    # restoring it changes nothing, while restoring an earlier layer's does
    assert effect[2] == 0.0 and effect[0] != 0.0 and effect[1] != 0.0
    again = ablate.causal_trace(model, tok, facts[:3], noise_samples=3, state="mlp", positions="all", seed=1)
    assert again["indirect_effect_by_layer"] == res["indirect_effect_by_layer"]  # seeded
    # a layer whose MLP outputs zeros has nothing to restore: its indirect effect is exactly 0
    with ablate.zeroed_mlp(model, 0):
        zeroed = ablate.causal_trace(model, tok, facts[:3], noise_samples=3, state="mlp", positions="all", seed=1)
    assert zeroed["indirect_effect_by_layer"][0]["mean"] == 0.0 and zeroed["indirect_effect_by_layer"][1]["mean"] != 0.0


def test_causal_trace_at_the_prompt_end():
    model, tok, facts = _trace_setup()
    kw = dict(noise_samples=3, seed=1, positions="end")
    hidden = ablate.causal_trace(model, tok, facts[:3], state="hidden", **kw)
    # the last layer's output at the last position is what the logits are computed from: restoring it
    # restores the clean prediction exactly, so its effect is the whole effect (p clean - p corrupted)
    whole = [f["p_clean"] - f["p_corrupted"] for f in hidden["per_fact"]]
    assert all(abs(f["indirect_effect"][-1] - w) < 1e-5 for f, w in zip(hidden["per_fact"], whole))
    assert any(abs(w) > 1e-4 for w in whole)
    # attention at the prompt's end is where the subject reaches the prediction: the first layer's attention
    # there reads the corrupted subject, so restoring it has an effect
    attn = ablate.causal_trace(model, tok, facts[:3], state="attn", **kw)
    assert attn["indirect_effect_by_layer"][0]["mean"] != 0.0
    assert "attention output" in attn["definition"] and "prompt's last token" in attn["definition"]
    with pytest.raises(ValueError, match="positions"):
        ablate.causal_trace(model, tok, facts[:1], state="attn", positions="first")


def test_causal_trace_runs_on_a_decoder_outside_the_fast_kva_path():
    """Tracing needs only decoder layers with an MLP: a Qwen3 model (not one of the fast KVA path's
    architectures) is traced at every state, and restoring its last layer at the end is the whole effect."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    from knowpack.models import tiny_tokenizer

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen3Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16)).eval()
    assert arch.model_type(model) not in arch.SUPPORTED_ARCHS
    _, _, facts = _trace_setup()
    for state in ("mlp", "attn"):
        res = ablate.causal_trace(model, tok, facts[:3], noise_samples=2, state=state, positions="all")
        assert res["facts"] == 3 and len(res["indirect_effect_by_layer"]) == 2
    end = ablate.causal_trace(model, tok, facts[:3], noise_samples=2, state="hidden", positions="end")
    assert all(abs(f["indirect_effect"][-1] - (f["p_clean"] - f["p_corrupted"])) < 1e-5 for f in end["per_fact"])


def _lora(model, **kw):
    from peft import LoraConfig, get_peft_model

    # init_lora_weights=False: B is random too, so every layer's update is non-zero from the start
    return get_peft_model(model, LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, init_lora_weights=False,
                                            target_modules=["gate_proj", "up_proj", "down_proj"], **kw)).eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_lora_only_in_keeps_exactly_the_chosen_layers_update():
    """With the adapter kept in layer 1 only, the model is the base model plus layer 1's LoRA update: the
    same as a copy whose other layers' LoRA B matrices are zero. With no layer kept it is the base model,
    with every layer the whole adapter, and the scalings come back after the block."""
    import copy

    ids = torch.randint(0, 64, (3, 10), generator=torch.Generator().manual_seed(1))
    base = _model()
    want_base = _logits(base, ids)
    model = _lora(copy.deepcopy(base))
    full = _logits(model, ids)
    assert not torch.allclose(full, want_base, atol=1e-4)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if "lora_B" in name and ".layers.1." not in name:
                p.zero_()
    with ablate.lora_only_in(model, [1]):
        assert torch.allclose(_logits(model, ids), _logits(reference, ids), atol=1e-6)
    with ablate.lora_only_in(model, []):
        assert torch.allclose(_logits(model, ids), want_base, atol=1e-6)
    with ablate.lora_only_in(model, [0, 1, 2]):
        assert torch.equal(_logits(model, ids), full)
    assert torch.equal(_logits(model, ids), full)  # restored
    assert [len(m) for m in ablate.lora_modules_by_layer(model)] == [3, 3, 3]


def test_lora_layer_profile_scores_each_layer_alone_and_each_layer_removed():
    import copy

    base = _model()
    evaluate = _scorer(base)  # agreement with the base model's argmax
    model = _lora(copy.deepcopy(base))
    prof = ablate.lora_layer_profile(model, evaluate)
    assert prof["no_adapter"]["agreement"] == 1.0
    assert prof["adapter"]["agreement"] < 1.0
    assert [lay["layer"] for lay in prof["layers"]] == [0, 1, 2]
    for lay in prof["layers"]:
        with ablate.lora_only_in(model, [lay["layer"]]):
            assert lay["only"]["agreement"] == evaluate(model)["agreement"]["accuracy"]
        with ablate.lora_only_in(model, [x for x in range(3) if x != lay["layer"]]):
            assert lay["without"]["agreement"] == evaluate(model)["agreement"]["accuracy"]


def test_lora_layer_profile_refuses_adapters_it_cannot_take_out_of_a_layer():
    from knowpack.errors import KnowpackError

    with pytest.raises(KnowpackError, match="no LoRA adapter"):
        ablate.lora_modules_by_layer(_model())
    with pytest.raises(KnowpackError, match="not plain LoRA"):
        ablate.lora_modules_by_layer(_lora(_model(), use_dora=True))
