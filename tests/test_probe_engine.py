"""The batched engine against the naive per-prompt `generate` loop, on tiny random models (float32)."""

from __future__ import annotations

import pytest
import torch

from knowpack.facts import Fact, FactSet
from knowpack.models import tiny_model, tiny_tokenizer
from knowpack.probe.engine import GenerationBackend, HFEngine, cascade_supported, naive_generate, stop_token_ids
from knowpack.probe.prompts import Prompt, build_probe_prompts, zero_shot_prompt

CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
MAX_NEW = 8


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models run fastest on one thread; on a shared machine extra threads only spin.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def make_facts() -> FactSet:
    rels = ["capital", "river", "author"]
    return FactSet(Fact(id=f"f{i}", question=f"What is the {rels[i % 3]} of Land{i}?", answers=(f"Item{i}",),
                        relation=rels[i % 3]) for i in range(12))


def mixed_prompts(tok) -> list:
    few_shot = build_probe_prompts(make_facts(), tok, n_prompts=2, shots=3, seed=1)  # a prefix per prompt
    shared = build_probe_prompts(make_facts(), tok, n_prompts=1, shots=2, seed=2, mode="shared")  # by relation
    prompts: list = [p for per in few_shot for p in per] + [p for per in shared[:6] for p in per]
    prompts += ["Question: Who wrote it?\nAnswer:", Prompt("", "Question: Why?\nAnswer:"),
                Prompt("Question: Wha", "t is it?\nAnswer:"),  # a prefix that may not tokenize on its own
                zero_shot_prompt("Where is Land3?", tok)]
    return prompts


@pytest.mark.parametrize("arch,prefill_tokens", [("llama", None), ("qwen2", None), ("llama", 16)])
def test_greedy_equals_naive_generate(tok, arch, prefill_tokens):
    model = tiny_model(arch, seed=3, vocab_size=len(tok))
    prompts = mixed_prompts(tok)
    # batches mix shared and own prefixes, lengths and unshared prompts; 16 prefill tokens put each
    # prefix in a prefill of its own, longer than asked
    engine = HFEngine(model, tok, batch_size=5, prefill_tokens=prefill_tokens)
    got = engine.generate(prompts, greedy=True, n_samples=0, max_new_tokens=MAX_NEW)
    want = naive_generate(model, tok, prompts, max_new_tokens=MAX_NEW)
    assert [c.greedy for c in got] == want
    assert all(c.samples == [] for c in got)
    assert isinstance(engine, GenerationBackend)


def test_greedy_with_samples_still_equals_naive(tok):
    model = tiny_model("llama", seed=4, vocab_size=len(tok))
    prompts = mixed_prompts(tok)[:10]
    got = HFEngine(model, tok, batch_size=4).generate(prompts, greedy=True, n_samples=3, max_new_tokens=MAX_NEW)
    assert [c.greedy for c in got] == naive_generate(model, tok, prompts, max_new_tokens=MAX_NEW)
    assert all(len(c.samples) == 3 for c in got)


def test_chat_template_prompts_equal_naive(tok):
    chat_tok = tiny_tokenizer()
    chat_tok.chat_template = CHAT_TEMPLATE
    model = tiny_model("llama", seed=5, vocab_size=len(chat_tok))
    prompts = [p for per in build_probe_prompts(make_facts(), chat_tok, n_prompts=2, shots=2) for p in per]
    assert all(p.prefix and not p.add_special_tokens for p in prompts)
    got = HFEngine(model, chat_tok, batch_size=6).generate(prompts, max_new_tokens=MAX_NEW)
    assert [c.greedy for c in got] == naive_generate(model, chat_tok, prompts, max_new_tokens=MAX_NEW)


def test_stops_at_end_of_line(tok):
    model = tiny_model("llama", seed=6, vocab_size=len(tok))
    prompts = mixed_prompts(tok)[:6]
    # Make the newline token win wherever the model would emit some frequent token: the newline
    # row of the output layer becomes a slightly scaled copy of that token's row.
    enc = tok(prompts[0].text, return_tensors="pt")
    first = model.generate(**enc, do_sample=False, max_new_tokens=3, pad_token_id=0)[0, -1].item()
    newline = tok.convert_tokens_to_ids("Ċ")
    assert newline in stop_token_ids(tok)
    with torch.no_grad():
        model.lm_head.weight[newline] = model.lm_head.weight[first] * 1.05

    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    got = HFEngine(model, tok, batch_size=len(prompts)).generate(prompts, max_new_tokens=32)
    hook.remove()
    assert len(calls) < 1 + 1 + 31  # prefix + suffix passes + 31 decode steps is the no-early-stop count
    assert all("\n" not in c.greedy for c in got)
    assert [c.greedy for c in got] == naive_generate(model, tok, prompts, max_new_tokens=32)
    # The plain loop without early stop gives the same answers, only slower.
    assert [c.greedy for c in got] == naive_generate(model, tok, prompts, max_new_tokens=32, stop_early=False)


def test_long_answers_grow_the_cache(tok):
    """Answers longer than the cache's first reserve (a random model rarely ends its line)."""
    model = tiny_model("llama", seed=12, vocab_size=len(tok))
    prompts = mixed_prompts(tok)[:6]
    for cascade in (True, False):
        got = HFEngine(model, tok, batch_size=3, cascade=cascade).generate(prompts, n_samples=2, max_new_tokens=40)
        assert [c.greedy for c in got] == naive_generate(model, tok, prompts, max_new_tokens=40)


def _reference_samples(model, tok, prompt, key, n_samples, temperature, top_k, seed, max_new):
    """The sampling rule applied by hand: each sample on its own, the whole sequence re-run at every step."""
    from knowpack.probe.engine import decode_answer, gumbel_noise, stream_key

    ends = stop_token_ids(tok) | {tok.eos_token_id}
    ids = tok(prompt.text)["input_ids"]
    answers = []
    for j in range(n_samples):
        stream = torch.tensor([stream_key(seed, key, j)])
        seq, gen = list(ids), []
        for step in range(max_new):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([seq])).logits[0, -1].float()
            vals, idx = torch.topk(logits, top_k)
            pick = (vals.double() / temperature + gumbel_noise(stream, step, idx[None])[0]).argmax()
            gen.append(int(idx[pick]))
            seq.append(gen[-1])
            if gen[-1] in ends:
                break
        answers.append(decode_answer(tok, gen))
    return answers


def test_samples_equal_the_rule_applied_one_sample_at_a_time(tok):
    """Shared prefills, rows merged while their tokens agree, cascade attention: none of it changes a
    sample, which is what the Gumbel rule gives on a row of its own."""
    model = tiny_model("llama", seed=13, vocab_size=len(tok))
    prompts = mixed_prompts(tok)[::3][:5]
    keys = [40 + i for i in range(len(prompts))]
    kw = dict(temperature=0.8, top_k=6, seed=2)
    got = HFEngine(model, tok, batch_size=4).generate(prompts, n_samples=4, sample_keys=keys, max_new_tokens=MAX_NEW,
                                                      **kw)
    want = [_reference_samples(model, tok, p, k, 4, kw["temperature"], kw["top_k"], kw["seed"], MAX_NEW)
            for p, k in zip(prompts, keys)]
    assert [c.samples for c in got] == want
    assert any(len(set(s)) > 1 for s in want)  # the samples of a prompt do differ


def test_sampling_reproducible_and_seeded(tok):
    model = tiny_model("qwen2", seed=7, vocab_size=len(tok))
    prompts = mixed_prompts(tok)[:8]
    engine = HFEngine(model, tok, batch_size=3)

    def run(seed):
        return engine.generate(prompts, greedy=False, n_samples=4, temperature=1.0, top_k=40, seed=seed,
                               max_new_tokens=MAX_NEW)

    a, b, c = run(0), run(0), run(1)
    assert a == b
    assert [x.samples for x in a] != [x.samples for x in c]
    assert all(x.greedy is None and len(x.samples) == 4 for x in a)
    assert len({s for x in a for s in x.samples}) > len(prompts)  # samples differ from one another


def test_top1_sampling_is_greedy(tok):
    model = tiny_model("llama", seed=8, vocab_size=len(tok))
    prompts = mixed_prompts(tok)[:5]
    got = HFEngine(model, tok, batch_size=5).generate(prompts, n_samples=2, top_k=1, max_new_tokens=MAX_NEW)
    assert all(c.samples == [c.greedy, c.greedy] for c in got)


def test_one_token_prompts_have_no_prefix(tok):
    model = tiny_model("llama", seed=14, vocab_size=len(tok))
    prompts = ["x", "Question: Why?\nAnswer:", "y", mixed_prompts(tok)[0]]
    assert len(tok("x")["input_ids"]) == 1
    for cascade in (True, False):
        got = HFEngine(model, tok, batch_size=4, cascade=cascade).generate(prompts, n_samples=2,
                                                                           max_new_tokens=MAX_NEW)
        assert [c.greedy for c in got] == naive_generate(model, tok, prompts, max_new_tokens=MAX_NEW)


def test_argument_checks(tok):
    model = tiny_model("llama", seed=0, vocab_size=len(tok))
    engine = HFEngine(model, tok)
    assert engine.generate([]) == []
    with pytest.raises(ValueError, match="temperature"):
        engine.generate(["x"], n_samples=2, temperature=0)
    with pytest.raises(ValueError, match="no tokens"):
        engine.generate([""])
    with pytest.raises(ValueError, match="batch_size"):
        HFEngine(model, tok, batch_size=0)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_cascade_and_copied_prefixes_agree(tok, arch):
    model = tiny_model(arch, seed=9, vocab_size=len(tok))
    prompts = mixed_prompts(tok)
    fast = HFEngine(model, tok, batch_size=6)
    assert fast.cascade and cascade_supported(model)
    copied = HFEngine(model, tok, batch_size=6, cascade=False)
    kw = dict(n_samples=2, temperature=1.0, max_new_tokens=MAX_NEW, seed=3)
    assert fast.generate(prompts, **kw) == copied.generate(prompts, **kw)


def test_sliding_window_model_copies_prefixes_and_equals_naive(tok):
    model = tiny_model("qwen2", seed=0, vocab_size=len(tok), use_sliding_window=True, sliding_window=16,
                       max_window_layers=0)
    assert not cascade_supported(model)
    engine = HFEngine(model, tok, batch_size=5)
    assert not engine.cascade
    prompts = mixed_prompts(tok)[:10]
    got = engine.generate(prompts, max_new_tokens=MAX_NEW)
    assert [c.greedy for c in got] == naive_generate(model, tok, prompts, max_new_tokens=MAX_NEW)


def test_lora_model_equals_naive(tok):
    from peft import LoraConfig, get_peft_model

    model = tiny_model("llama", seed=10, vocab_size=len(tok))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                                  init_lora_weights=False))
    peft_model.train()
    prompts = mixed_prompts(tok)[:8]
    got = HFEngine(peft_model, tok, batch_size=4).generate(prompts, max_new_tokens=MAX_NEW)
    assert peft_model.training  # the caller's mode is restored
    peft_model.eval()
    assert [c.greedy for c in got] == naive_generate(peft_model, tok, prompts, max_new_tokens=MAX_NEW)


# --- common random numbers ----------------------------------------------------------------------


def test_samples_depend_on_the_prompt_key_alone(tok):
    """A prompt's samples are the same whatever batch it lands in, whatever else is asked, and whether
    its greedy answer is generated in the same pass (common random numbers)."""
    model = tiny_model("llama", seed=5, vocab_size=len(tok))
    prompts = mixed_prompts(tok)
    keys = [1000 + i for i in range(len(prompts))]
    kw = dict(n_samples=5, temperature=1.0, top_k=40, max_new_tokens=MAX_NEW, seed=7)
    full = HFEngine(model, tok, batch_size=4).generate(prompts, greedy=True, sample_keys=keys, **kw)
    pick = [9, 2, 14, 5]
    part = HFEngine(model, tok, batch_size=3).generate([prompts[i] for i in pick], greedy=False,
                                                       sample_keys=[keys[i] for i in pick], **kw)
    assert [c.samples for c in part] == [full[i].samples for i in pick]
    assert len({s for c in full for s in c.samples}) > len(prompts)  # they are samples, not one answer
    other_seed = HFEngine(model, tok, batch_size=4).generate(prompts, greedy=False, sample_keys=keys,
                                                             **{**kw, "seed": 8})
    assert [c.samples for c in other_seed] != [c.samples for c in full]
    with pytest.raises(ValueError, match="sample keys"):
        HFEngine(model, tok).generate(prompts, sample_keys=keys[:-1], **kw)


def test_gumbel_sampling_draws_from_the_top_k_softmax(tok):
    """The engine's sampling rule (Gumbel-max on each row's own stream) follows softmax(top-k logits / T):
    chi-square over 4000 rows with one model's next-token logits; transformers' own sampling at the
    same settings is checked against the same distribution."""
    from scipy.stats import chisquare
    from transformers import GenerationConfig

    from knowpack.probe.engine import stream_key

    model = tiny_model("llama", seed=6, vocab_size=len(tok))
    ids = tok(zero_shot_prompt("Where is Land3?", tok).text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1].float()
    temperature, top_k, n = 0.7, 8, 4000
    vals, idx = torch.topk(logits.double() / temperature, top_k)
    expected = (torch.softmax(vals, -1) * n).numpy()
    streams = torch.tensor([stream_key(11, key, 0) for key in range(n)], dtype=torch.long)
    picked = HFEngine._choose(logits.expand(n, -1).clone(), torch.ones(n, dtype=torch.bool), temperature, top_k,
                              streams, step=0)
    ours = torch.tensor([(picked == t).sum().item() for t in idx], dtype=torch.float64)
    assert ours.sum() == n and chisquare(ours.numpy(), expected).pvalue > 1e-3
    # another step draws afresh from the same streams: not a copy of step 0
    again = HFEngine._choose(logits.expand(n, -1).clone(), torch.ones(n, dtype=torch.bool), temperature, top_k,
                             streams, step=1)
    assert (again != picked).float().mean() > 0.2
    torch.manual_seed(0)
    cfg = GenerationConfig(do_sample=True, temperature=temperature, top_k=top_k, top_p=1.0, max_new_tokens=1,
                           pad_token_id=0, num_return_sequences=n)
    hf = model.generate(ids, generation_config=cfg)[:, -1]
    theirs = torch.tensor([(hf == t).sum().item() for t in idx], dtype=torch.float64)
    assert theirs.sum() == n and chisquare(theirs.numpy(), expected).pvalue > 1e-3
