"""KVA: fast == reference on tiny random models, the reference against brute force, files and prompts."""

from __future__ import annotations

import json

import pytest
import torch

from knowpack.errors import InputError, KnowpackError
from knowpack.methods.loki import arch
from knowpack.methods.loki.kva import (
    CPU_BATCH_PROMPTS,
    DEFAULT_BATCH_PROMPTS,
    attribute,
    attribute_ids,
    default_batch_prompts,
    encode_prompt,
    format_mmlu,
    load_attribution_prompts,
    load_scores,
    max_rel_diff,
    save_scores,
)
from knowpack.models import TINY_ARCHS, tiny_model, tiny_tokenizer

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These models are tiny: a second thread only adds synchronisation, which is slow on a shared CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL = dict(hidden_size=32, layers=3, intermediate_size=64, heads=4, kv_heads=2)
RTOL = 1e-5


def _prompts(lengths, seed=0, vocab=300):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def _assert_close(fast, ref):
    assert fast.shape == ref.shape
    assert max_rel_diff(fast, ref) <= RTOL, max_rel_diff(fast, ref)


@pytest.mark.parametrize("arch_name", TINY_ARCHS)
@pytest.mark.parametrize("lengths,steps,batch", [((12, 1, 7, 12), 7, 4), ((20, 3), 3, 1), ((9,), 1, 4)])
def test_fast_equals_reference(arch_name, lengths, steps, batch):
    model = tiny_model(arch_name, seed=TINY_ARCHS.index(arch_name) + 1, **SMALL)
    prompts = _prompts(lengths, seed=len(lengths))
    fast = attribute_ids(model, prompts, method="fast", steps=steps, batch_prompts=batch, progress=False)
    ref = attribute_ids(model, prompts, method="reference", steps=steps, progress=False)
    assert ref.abs().max() > 0
    _assert_close(fast, ref)


def test_fast_equals_reference_sliding_window_and_eager():
    # Qwen2 with sliding-window layers shorter than the prompt, eager attention (additive padding mask).
    model = tiny_model("qwen2", seed=5, use_sliding_window=True, sliding_window=4, max_window_layers=1,
                       attn_implementation="eager", **SMALL)
    prompts = _prompts((10, 3, 6), seed=9)
    fast = attribute_ids(model, prompts, method="fast", steps=4, batch_prompts=3, progress=False)
    ref = attribute_ids(model, prompts, method="reference", steps=4, progress=False)
    _assert_close(fast, ref)


def test_batched_fast_equals_one_at_a_time():
    model = tiny_model("llama", seed=3, **SMALL)
    prompts = _prompts((5, 11, 2, 8, 8), seed=4)
    grouped = attribute_ids(model, prompts, steps=3, batch_prompts=5, progress=False)
    single = attribute_ids(model, prompts, steps=3, batch_prompts=1, progress=False)
    _assert_close(grouped, single)
    # Shards attributed separately concatenate to the whole.
    parts = [attribute_ids(model, prompts[:2], steps=3, progress=False),
             attribute_ids(model, prompts[2:], steps=3, progress=False)]
    _assert_close(torch.cat(parts), single)


def test_default_group_size_follows_the_device():
    model = tiny_model("llama", seed=3, **SMALL)
    assert default_batch_prompts(model) == CPU_BATCH_PROMPTS
    with torch.device("meta"):
        meta = tiny_model("llama", seed=3, **SMALL)
    assert default_batch_prompts(meta) == DEFAULT_BATCH_PROMPTS < CPU_BATCH_PROMPTS
    prompts = _prompts((5, 11, 2, 8, 8, 3, 9, 4, 6, 7, 12, 5, 8, 2, 10, 6, 9, 3), seed=6)  # 18: two CPU groups
    by_default = attribute_ids(model, prompts, steps=2, progress=False)
    _assert_close(by_default, attribute_ids(model, prompts, steps=2, batch_prompts=1, progress=False))


class _ReplacedMLP(torch.nn.Module):
    """Stands in for a layer's MLP: its output at the last position becomes `value` (independent of KVA's hooks)."""

    def __init__(self, mlp, value):
        super().__init__()
        self.inner, self.value = mlp, value

    def forward(self, x):
        out = self.inner(x)
        return torch.cat([out[:, :-1], self.value.to(out.dtype)[None, None].expand(out.shape[0], 1, -1)], dim=1)


def _replaced_prob(model, ids, layer, value, target):
    """F with layer `layer`'s MLP output at the last position set to `value`, by swapping the MLP module."""
    layers = arch.decoder_layers(model)
    mlp = layers[layer].mlp
    layers[layer].mlp = _ReplacedMLP(mlp, value)
    try:
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    finally:
        layers[layer].mlp = mlp
    return torch.softmax(logits.double(), -1)[target]


def _clean(model, ids, layer):
    """(z at `layer`, argmax target) from a plain forward."""
    seen = {}
    mlp = arch.decoder_layers(model)[layer].mlp
    handle = mlp.register_forward_hook(lambda _m, _i, o: seen.__setitem__("z", o[0, -1].clone()))
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    finally:
        handle.remove()
    return seen["z"], int(logits.argmax())


@pytest.mark.parametrize("steps", [1, 3])
def test_reference_against_brute_force(steps):
    """The yardstick itself: IG by autograd through a swapped-in MLP, and by central differences."""
    model = tiny_model("llama", seed=11, dtype=torch.float64, hidden_size=16, layers=2,
                       intermediate_size=32, heads=2, kv_heads=1)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # a peaked F (about 0.1) so differences stand above float noise
    ids = _prompts((6,), seed=2)[0]
    layer = 1
    z, target = _clean(model, ids, layer)
    autograd_sum = torch.zeros_like(z)
    fd_sum = torch.zeros_like(z)
    eps = 1e-3  # float32 RMSNorm/rotary inside the float64 model put the noise floor near 1e-4
    for k in range(steps):
        value = ((k / steps) * z).requires_grad_(True)
        (grad,) = torch.autograd.grad(_replaced_prob(model, ids, layer, value, target), value)
        autograd_sum += grad
        with torch.no_grad():
            for i in range(z.numel()):
                step = torch.zeros_like(z)
                step[i] = eps
                plus = _replaced_prob(model, ids, layer, value.detach() + step, target)
                minus = _replaced_prob(model, ids, layer, value.detach() - step, target)
                fd_sum[i] += (plus - minus) / (2 * eps)
    by_autograd = (z * autograd_sum / steps).float()[None]
    by_fd = (z * fd_sum / steps).float()[None]
    ref = attribute_ids(model, [ids], method="reference", steps=steps, progress=False)[:, layer]
    fast = attribute_ids(model, [ids], method="fast", steps=steps, progress=False)[:, layer]
    assert max_rel_diff(ref, by_autograd) < 1e-6  # scores are stored in float32
    assert max_rel_diff(fast, by_autograd) < 1e-6
    assert max_rel_diff(ref, by_fd) < 1e-3


def test_down_proj_output_is_mlp_output_before_residual():
    """z_l, as KVA hooks it, is the MLP output: layer output - layer input - attention output."""
    model = tiny_model("qwen2", seed=4, **SMALL)
    ids = _prompts((7,), seed=1)[0]
    layers = arch.decoder_layers(model)
    seen = {}
    handles = []
    for j, layer in enumerate(layers):
        handles += [
            layer.mlp.down_proj.register_forward_hook(lambda _m, _i, o, j=j: seen.__setitem__(("z", j), o[0, -1])),
            layer.mlp.register_forward_hook(lambda _m, _i, o, j=j: seen.__setitem__(("mlp", j), o[0, -1])),
            layer.self_attn.register_forward_hook(lambda _m, _i, o, j=j: seen.__setitem__(("attn", j), o[0][0, -1])),
            layer.register_forward_hook(
                lambda _m, i, o, j=j: seen.__setitem__(("io", j), ((o[0] if isinstance(o, tuple) else o)[0, -1]
                                                                    - i[0][0, -1]))),
        ]
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    for h in handles:
        h.remove()
    for j in range(len(layers)):
        torch.testing.assert_close(seen[("z", j)], seen[("mlp", j)], rtol=0, atol=0)
        torch.testing.assert_close(seen[("z", j)], seen[("io", j)] - seen[("attn", j)], rtol=1e-5, atol=1e-6)


def test_alpha_zero_row_is_the_ablated_gradient():
    """steps=1 leaves only α=0: Attr = z ⊙ ∂F/∂z with the last-position MLP output zeroed."""
    model = tiny_model("mistral", seed=8, **SMALL)
    ids = _prompts((5,), seed=3)[0]
    layer = 2
    z, target = _clean(model, ids, layer)
    value = torch.zeros_like(z, requires_grad=True)
    (grad,) = torch.autograd.grad(_replaced_prob(model, ids, layer, value, target), value)
    expected = (z * grad).float()[None]
    for method in ("fast", "reference"):
        got = attribute_ids(model, [ids], method=method, steps=1, progress=False)[:, layer]
        assert max_rel_diff(got, expected) <= RTOL


def test_shape_dtype_and_model_state_restored():
    model = tiny_model("llama", seed=0, **SMALL).train()
    model.lm_head.weight.requires_grad_(False)
    tok = tiny_tokenizer()
    scores = attribute(model, tok, ["Question: What is the capital of France?\nAnswer:", "A, B"], progress=False)
    assert scores.shape == (2, 3, 32) and scores.dtype == torch.float32 and scores.device.type == "cpu"
    assert model.training
    assert not model.lm_head.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "lm_head.weight")
    assert all(p.grad is None for p in model.parameters())


def test_phase_times_cover_the_fast_path_and_change_nothing():
    from knowpack.methods.loki.kva import phase_times

    model = tiny_model("llama", seed=2, **SMALL)
    prompts = _prompts((6, 9), seed=7)
    plain = attribute_ids(model, prompts, steps=2, progress=False)
    with phase_times() as phases:
        timed = attribute_ids(model, prompts, steps=2, progress=False)
    assert torch.equal(timed, plain)
    assert set(phases) == {"prefix", "clean", "forward", "backward", "scores"}
    assert all(seconds >= 0 for seconds in phases.values())
    before = dict(phases)
    attribute_ids(model, prompts, steps=2, progress=False)  # outside the block nothing is added
    assert phases == before


def test_works_under_inference_mode():
    model = tiny_model("llama", seed=2, **SMALL)
    prompts = _prompts((4,), seed=6)
    expected = attribute_ids(model, prompts, steps=2, progress=False)
    with torch.inference_mode():
        got = attribute_ids(model, prompts, steps=2, progress=False)
    assert torch.equal(got, expected)


def test_bfloat16_model_gives_float32_scores():
    model = tiny_model("llama", seed=1, dtype=torch.bfloat16, **SMALL)
    prompts = _prompts((6, 4), seed=5)
    fast = attribute_ids(model, prompts, steps=3, progress=False)
    ref = attribute_ids(model, prompts, method="reference", steps=3, progress=False)
    assert fast.dtype == torch.float32 and torch.isfinite(fast).all()
    assert max_rel_diff(fast, ref) < 0.1  # bf16 rounding only


def test_bad_arguments():
    model = tiny_model("llama", seed=0, **SMALL)
    with pytest.raises(KnowpackError, match="unknown KVA method"):
        attribute_ids(model, [[1, 2]], method="slow", progress=False)
    with pytest.raises(KnowpackError, match="steps"):
        attribute_ids(model, [[1, 2]], steps=0, progress=False)
    assert attribute_ids(model, [], progress=False).shape == (0, 3, 32)


def test_unsupported_architecture_names_supported_ones():
    from transformers import AutoModelForCausalLM, GPT2Config

    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64,
                                                       bos_token_id=1, eos_token_id=2))
    for method in ("fast", "reference"):
        with pytest.raises(KnowpackError, match="llama, qwen2, mistral") as info:
            attribute_ids(gpt2, [[1, 2, 3]], method=method, progress=False)
        assert "gpt2" in str(info.value)


def test_save_load_round_trip(tmp_path):
    scores = torch.randn(3, 2, 5)
    path = save_scores(tmp_path / "s.safetensors", scores, ["a", "b", "c"],
                       {"method": "fast", "steps": 7, "model": "tiny"})
    loaded, ids, settings = load_scores(path)
    assert torch.equal(loaded, scores) and ids == ["a", "b", "c"]
    assert settings["method"] == "fast" and settings["steps"] == 7 and settings["model"] == "tiny"
    assert "knowpack_version" in settings
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert json.loads(meta["ids"]) == ["a", "b", "c"] and meta["steps"] == "7" and meta["method"] == "fast"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_load_scores_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_scores(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="bad.safetensors"):
        load_scores(bad)
    with pytest.raises(KnowpackError, match="ids"):
        save_scores(tmp_path / "x.safetensors", torch.zeros(2, 1, 1), ["a"])


MMLU_ROW = {"question": "What is 2+2?", "choices": ["1", "2", "3", "4"], "answer": 3,
            "subject": "elementary_mathematics"}
MMLU_TEXT = ("There is a single choice question about elementary mathematics. Answer the question by replying "
             "A, B, C or D.\nQuestion: What is 2+2?\nChoices:\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: ")


def _write(tmp_path, rows, name="p.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_mmlu_prompt_exact_string(tmp_path):
    assert format_mmlu(MMLU_ROW["question"], MMLU_ROW["choices"], MMLU_ROW["subject"]) == MMLU_TEXT
    path = _write(tmp_path, [MMLU_ROW, {"id": "p1", "prompt": "  verbatim {x}\n"}, {**MMLU_ROW, "id": 7}])
    ids, prompts = load_attribution_prompts(path)
    assert ids == ["line-1", "p1", "7"]
    assert prompts == [MMLU_TEXT, "  verbatim {x}\n", MMLU_TEXT]


def test_mmlu_prompt_with_chat_template(tmp_path):
    tok = tiny_tokenizer()
    tok.chat_template = ("{% for m in messages %}<s>[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}[assistant] {% endif %}")
    ids, prompts = load_attribution_prompts(_write(tmp_path, [MMLU_ROW, {"id": "v", "prompt": "raw"}]), tok)
    assert prompts == [f"<s>[user] {MMLU_TEXT}\n[assistant] ", "raw"]


def test_encode_prompt_does_not_double_bos():
    class Tok:
        bos_token, bos_token_id = "<s>", 1

        def __call__(self, text, add_special_tokens=True):
            ids = [1] * add_special_tokens + [ord(c) for c in text.replace("<s>", "\x01")]
            return {"input_ids": ids}

    assert encode_prompt(Tok(), "ab") == [1, 97, 98]
    assert encode_prompt(Tok(), "<s>ab") == [1, 97, 98]


@pytest.mark.parametrize("line,field,message", [
    ('{"id": "a"}', "prompt", "either"),
    ('{"id": "a", "prompt": 3}', "prompt", "must be a string"),
    ('{"prompt": "x"}', "id", "missing field 'id'"),
    ('{"id": "", "prompt": "x"}', "id", "non-empty"),
    ('{"question": "q", "choices": ["a", "b", "c"], "answer": 0, "subject": "s"}', "choices", "exactly 4"),
    ('{"question": "q", "choices": ["a", "b", "c", "d"], "answer": 4, "subject": "s"}', "answer", "0-3"),
    ('{"question": "q", "choices": ["a", "b", "c", "d"], "answer": "A"}', "subject", "missing"),
    ('{"question": "", "choices": ["a", "b", "c", "d"], "answer": "A", "subject": "s"}', "question", "empty"),
    ('{"id": "p1", "prompt": "again"}', "id", "duplicate id 'p1'"),
    ('[1, 2]', None, "JSON object"),
    ('{"id": "a", ', None, "invalid JSON"),
])
def test_bad_prompt_rows(tmp_path, line, field, message):
    path = _write(tmp_path, [{"id": "p1", "prompt": "fine"}, line])
    with pytest.raises(InputError, match=message) as info:
        load_attribution_prompts(path)
    assert info.value.line == 2 and info.value.field == field and str(path) in str(info.value)


def test_empty_and_undecodable_files(tmp_path):
    with pytest.raises(InputError, match="empty"):
        load_attribution_prompts(_write(tmp_path, []))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"id": "a", "prompt": "x"}\n{"id": "\xff"}\n')
    with pytest.raises(InputError, match="UTF-8") as info:
        load_attribution_prompts(bad)
    assert info.value.line == 2
    with pytest.raises(InputError, match="not found"):
        load_attribution_prompts(tmp_path / "nope.jsonl")
