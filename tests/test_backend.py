"""The generation-backend seam: probing through any GenerationBackend, and the vLLM backend on a fake vLLM.

vLLM is not installed in CI (nor installable here), so its backend is exercised against a stand-in
`vllm` module with the same surface (`LLM(...)`, `LLM.generate(prompts, SamplingParams, use_tqdm)`,
`SamplingParams(...)`): what token ids it is fed, which sampling parameters, how answers come back,
that adapters (LoKI, DoRA) are merged into a plain model before it is served, and the message when
vLLM is missing.
"""

from __future__ import annotations

import json
import os
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from knowpack.cli import main
from knowpack.facts import Fact, FactSet
from knowpack.probe import GenerationBackend, ProbeSettings, answer_zero_shot, probe_facts
from knowpack.probe.engine import Completions
from knowpack.probe.prompts import Prompt

FACTS = FactSet([Fact(f"f{i}", f"Where was person {i} born?", (f"town{i}",), relation="birthplace",
                      subject=f"person {i}") for i in range(5)])


def scripted(question: str, sample: bool, k: int) -> str:
    """f0 always right (HighlyKnown), f1 right on greedy prompt 0 only (MaybeKnown), f2 right only
    when sampled (WeaklyKnown), f3 never (Unknown), f4 refuses."""
    i = int(re.findall(r"person (\d+) born\?", question)[-1])
    if i == 0 or (i == 1 and not sample and k == 0) or (i == 2 and sample):
        return f"town{i}"
    return "I don't know" if i == 4 else "Paris"


class FakeBackend:
    def __init__(self):
        self.calls: list[dict] = []

    def generate(self, prompts, *, greedy=True, n_samples=0, temperature=0.5, top_k=40, max_new_tokens=32, seed=0,
                 stop="\n", progress=None, sample_keys=None):
        self.calls.append({"n": len(prompts), "greedy": greedy, "n_samples": n_samples, "temperature": temperature,
                           "top_k": top_k, "max_new_tokens": max_new_tokens, "seed": seed, "stop": stop,
                           "keys": len(set(sample_keys or ()))})
        out, seen = [], {}
        for p in prompts:
            text = p.text if isinstance(p, Prompt) else p
            k = seen[text.rsplit("Question:", 1)[-1]] = seen.get(text.rsplit("Question:", 1)[-1], -1) + 1
            out.append(Completions(scripted(text, False, k) if greedy else None,
                                   [scripted(text, True, k) for _ in range(n_samples)]))
        if progress:
            progress(len(prompts))
        return out


def test_probe_categorises_whatever_backend_answers(tok):
    backend = FakeBackend()
    assert isinstance(backend, GenerationBackend)
    settings = ProbeSettings(n_prompts=2, shots=1, n_samples=3, temperature=0.7, top_k=5, max_new_tokens=7, seed=3)
    rows = probe_facts(None, tok, FACTS, settings, backend=backend, progress=False)
    assert [r["category"] for r in rows] == ["HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown", "Unknown"]
    assert [r["p_greedy"] for r in rows] == [1.0, 0.5, 0.0, 0.0, 0.0]
    assert rows[2]["p_sample"] == 1.0 and rows[4]["refused"] == [True, True]
    assert backend.calls == [{"n": 10, "greedy": True, "n_samples": 3, "temperature": 0.7, "top_k": 5,
                              "max_new_tokens": 7, "seed": 3, "stop": "\n", "keys": 10}]  # a stream per prompt
    answers = answer_zero_shot(None, tok, [f.question for f in FACTS], backend=backend)
    assert answers == ["town0", "town1", "Paris", "Paris", "I don't know"]


# --- the vLLM backend on a stand-in vllm module ---------------------------------------------------


class FakeLLM:
    instances: list["FakeLLM"] = []

    def __init__(self, **kwargs):
        self.kwargs, self.calls = kwargs, []
        FakeLLM.instances.append(self)
        from knowpack.models import load_tokenizer

        self.tok = load_tokenizer(kwargs["tokenizer"])

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append((prompts, params))
        outs = []
        for i, p in enumerate(prompts):
            text = self.tok.decode(p["prompt_token_ids"])
            one = params[i] if isinstance(params, list) else params  # vLLM takes one per prompt or one for all
            sample = one.temperature > 0
            # what vLLM returns: the text after the prompt, stop string removed, maybe with spaces
            texts = [f" {scripted(text, sample, 0)} " for _ in range(one.n)]
            outs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(text=t) for t in texts]))
        return outs


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


@pytest.fixture
def fake_vllm(monkeypatch):
    FakeLLM.instances = []
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams, module.__version__ = FakeLLM, FakeSamplingParams, "0.0-fake"
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_vllm_backend_feeds_hf_token_ids_and_returns_engine_style_answers(fake_vllm, tiny_dir, tok):
    from knowpack.probe.vllm_backend import VLLMBackend

    prepared = []
    backend = VLLMBackend(tiny_dir, seed=5, max_model_len=256, prepare=lambda: prepared.append(True))
    assert FakeLLM.instances == [] and prepared == []  # nothing starts before something is generated
    prompts = [Prompt("Question: Where was person 7 born?\n", "Answer:"),
               Prompt("<s>Question: Where was person 0 born?\n", "Answer:", add_special_tokens=False)]
    out = backend.generate(prompts, greedy=True, n_samples=2, temperature=0.5, top_k=0, max_new_tokens=9, seed=5)
    llm, = FakeLLM.instances
    assert prepared == [True] and backend.llm is llm  # started once, after `prepare`
    assert llm.kwargs["model"] == str(tiny_dir) and llm.kwargs["seed"] == 5 and llm.kwargs["max_model_len"] == 256
    assert llm.kwargs["enable_prefix_caching"] is True
    (fed, greedy), (_, sampled) = llm.calls
    assert [f["prompt_token_ids"] for f in fed] == [tok(p.text, add_special_tokens=p.add_special_tokens)["input_ids"]
                                                     for p in prompts]
    assert (greedy.n, greedy.temperature, greedy.max_tokens, greedy.stop) == (1, 0.0, 9, ["\n"])
    # one sampling request per prompt, seeded by (seed, the prompt's sample key): common random numbers
    assert [(x.n, x.temperature, x.top_k) for x in sampled] == [(2, 0.5, -1)] * 2  # top_k 0: all tokens
    assert len({x.seed for x in sampled}) == 2
    again = VLLMBackend(tiny_dir, seed=5, max_model_len=256)
    again.generate(prompts[::-1], greedy=False, n_samples=2, seed=5, sample_keys=[1, 0])
    assert [x.seed for x in FakeLLM.instances[-1].calls[0][1]] == [x.seed for x in sampled][::-1]
    assert [(o.greedy, o.samples) for o in out] == [("Paris", ["Paris", "Paris"]), ("town0", ["town0", "town0"])]


def _cli_probe(tiny_dir, facts, out, cache, *extra):
    return main(["-q", "probe", "--model", str(tiny_dir), "--facts", str(facts), "--out", str(out), "--cache-dir",
                 str(cache), "--no-progress", *extra, "n_prompts=2", "shots=1", "n_samples=2", "max_new_tokens=4"])


def _facts_file(tmp_path: Path) -> Path:
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(json.dumps(f.to_dict()) + "\n" for f in FACTS))
    return path


def test_knowpack_probe_backend_vllm(fake_vllm, tmp_path, tiny_dir):
    facts = _facts_file(tmp_path)
    assert _cli_probe(tiny_dir, facts, tmp_path / "out", tmp_path / "cache", "--backend", "vllm") == 0
    rows = [json.loads(x) for x in (tmp_path / "out" / "probe.jsonl").read_text().splitlines()]
    # every greedy prompt of a vLLM call is answered as k = 0, so f1 counts as HighlyKnown here
    assert [r["category"] for r in rows] == ["HighlyKnown", "HighlyKnown", "WeaklyKnown", "Unknown", "Unknown"]
    assert json.loads((tmp_path / "out" / "probe_meta.json").read_text())["backend"] == "vllm"
    assert len(FakeLLM.instances[-1].calls) == 2
    assert json.loads((tmp_path / "out" / "probe_meta.json").read_text())["engine"]["vllm"] == "0.0-fake"
    # the cache is keyed by the served model's files: a second probe starts no engine at all
    started = len(FakeLLM.instances)
    assert _cli_probe(tiny_dir, facts, tmp_path / "out2", tmp_path / "cache", "--backend", "vllm") == 0
    assert len(FakeLLM.instances) == started
    assert (tmp_path / "out2" / "probe.jsonl").read_bytes() == (tmp_path / "out" / "probe.jsonl").read_bytes()


def _adapter(method_name: str, tiny_dir: Path, out: Path) -> None:
    from knowpack.methods import get_method
    from knowpack.methods.loki.method import LokiSettings
    from knowpack.methods.peft_methods import LoraSettings
    from knowpack.models import load_model

    model, _ = load_model(str(tiny_dir), device="cpu", dtype="float32")
    method = get_method(method_name)
    if method_name == "loki":
        model = method.prepare(model, LokiSettings(q=50), nodes=[[0, 5, 9], [1, 2]])
    else:
        model = method.prepare(model, LoraSettings(r=2, dropout=0.0))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.5 * torch.randn_like(p))
    method.save(model, out, base_model=str(tiny_dir))


@pytest.mark.parametrize("method_name", ["loki", "dora"])
def test_adapters_are_merged_before_vllm_serves_them(fake_vllm, tmp_path, tiny_dir, method_name):
    from transformers import AutoModelForCausalLM

    from knowpack.adapters import load_adapted

    adapter = tmp_path / "adapter"
    _adapter(method_name, tiny_dir, adapter)
    facts, out = _facts_file(tmp_path), tmp_path / "out"
    assert _cli_probe(tiny_dir, facts, out, tmp_path / "cache", "--backend", "vllm", "--adapter", str(adapter)) == 0
    served = Path(FakeLLM.instances[-1].kwargs["model"])
    assert served == out / "merged-model" and not (out / "merged-model.tmp").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(served), dtype=torch.float32)
    model, _, method = load_adapted(str(tiny_dir), adapter, device="cpu", dtype="float32")
    expected = method.merge(model).state_dict()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).state_dict()
    got = merged.state_dict()
    assert all(torch.allclose(got[k], expected[k], atol=1e-6) for k in expected)
    assert any(not torch.equal(got[k], base[k]) for k in base)  # the adapter changed the served weights

    # Probed again from the cache: no merge, no engine. With a cold cache into the same directory:
    # the stamped merge is reused and only the engine starts.
    started, weights = len(FakeLLM.instances), next(served.glob("*.safetensors"))
    mtime = weights.stat().st_mtime_ns
    assert _cli_probe(tiny_dir, facts, tmp_path / "out2", tmp_path / "cache", "--backend", "vllm", "--adapter",
                      str(adapter)) == 0
    assert len(FakeLLM.instances) == started and not (tmp_path / "out2" / "merged-model").exists()
    assert _cli_probe(tiny_dir, facts, out, tmp_path / "cold", "--backend", "vllm", "--adapter", str(adapter)) == 0
    assert len(FakeLLM.instances) == started + 1 and weights.stat().st_mtime_ns == mtime


def test_vllm_cache_key_follows_the_adapter_contents(tmp_path, tiny_dir):
    import shutil

    from knowpack.probe.vllm_backend import dir_fingerprint, source_fingerprint

    adapter_a, adapter_b = tmp_path / "a", tmp_path / "b"
    _adapter("loki", tiny_dir, adapter_a)
    shutil.copytree(adapter_a, adapter_b)
    for f in adapter_b.iterdir():
        os.utime(f, ns=(1, 1))
    # the same adapter elsewhere, touched: the same key; no adapter: another key
    assert source_fingerprint(tiny_dir, adapter_a) == source_fingerprint(tiny_dir, adapter_b)
    assert source_fingerprint(tiny_dir, adapter_a) != source_fingerprint(tiny_dir) == source_fingerprint(tiny_dir)
    weights = next(adapter_b.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one trained weight
    weights.write_bytes(bytes(data))
    assert source_fingerprint(tiny_dir, adapter_a) != source_fingerprint(tiny_dir, adapter_b)
    # a base model rewritten in place is another model
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    before = dir_fingerprint(copy)
    rewritten = next(copy.glob("*.safetensors"))
    rewritten.write_bytes(rewritten.read_bytes())
    os.utime(rewritten, ns=(2, 2))
    assert dir_fingerprint(copy) != before
