"""Multiple-choice scoring: letter likelihood (lm-eval's mmlu) and choice-text continuation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from knowpack.evaluate.mc import (CONTINUATION_TEMPLATE, LETTERS, format_mmlu, letter_loglikelihoods, loglikelihoods,
                                  score_mc)
from knowpack.evaluate.stage import WORLD_MC, EvalSettings, mc_scoring
from knowpack.models import tiny_model, tiny_tokenizer

ROWS = [
    {"question": "Where was Ana Bel born?", "choices": ["Rome", "zz", "Oslo", "Lima"], "answer": 1, "subject": "geo"},
    {"question": "What does Bo Kerr do?", "choices": ["zz", "baker", "pilot", "judge"], "answer": 0, "subject": "jobs"},
    {"question": "Which year?", "choices": ["1901", "1950", "zz", "1999"], "answer": 2, "subject": "history"},
]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model("llama", vocab_size=len(tok), seed=3)


class AlwaysZ(torch.nn.Module):
    """A stand-in LM whose next token is 'z' with probability ~1 everywhere."""

    def __init__(self, tok):
        super().__init__()
        self.vocab = len(tok)
        self.z = tok.convert_tokens_to_ids("z")
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, **_):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.z] = 20.0
        return SimpleNamespace(logits=logits)


def _manual_loglikelihood(model, tok, context: str, continuation: str) -> float:
    """One unpadded forward pass per request, the definition the batched code must reproduce."""
    ctx = tok(context)["input_ids"]
    full = tok(context + continuation)["input_ids"]
    assert full[:len(ctx)] == ctx
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([full])).logits[0].float().log_softmax(-1)
    return float(sum(logp[i - 1, full[i]] for i in range(len(ctx), len(full))))


def test_batched_loglikelihoods_equal_one_request_at_a_time(model, tok):
    requests = [(CONTINUATION_TEMPLATE.format(question=r["question"]), f" {c}") for r in ROWS for c in r["choices"]]
    batched = loglikelihoods(model, tok, requests, batch_size=5)  # uneven batches, mixed lengths
    for (context, continuation), value in zip(requests, batched.tolist()):
        assert value == pytest.approx(_manual_loglikelihood(model, tok, context, continuation), abs=1e-4)


def test_letter_scoring_is_the_argmax_of_the_letter_likelihoods(model, tok):
    res = score_mc(model, tok, ROWS, chat=False)
    prompts = [format_mmlu(r["question"], r["choices"], r["subject"]) for r in ROWS]
    ll = letter_loglikelihoods(model, tok, prompts)
    assert ll.shape == (len(ROWS), len(LETTERS))
    for i, prompt in enumerate(prompts):
        # The prompt's trailing space moves into the continuation: "Answer:" + " A".
        manual = [_manual_loglikelihood(model, tok, prompt.rstrip(" "), " " + letter) for letter in LETTERS]
        assert ll[i].tolist() == pytest.approx(manual, abs=1e-4)
    assert res["predictions"] == ll.argmax(-1).tolist()
    assert res["scoring"] == "letter" and res["n"] == len(ROWS)
    assert res["accuracy"] == sum(p == r["answer"] for p, r in zip(res["predictions"], ROWS)) / len(ROWS)


def test_continuation_scoring_picks_the_likeliest_choice_text(tok):
    """With a model that always says 'z', the choice 'zz' is the likeliest text: every gold answer here."""
    res = score_mc(AlwaysZ(tok), tok, ROWS, scoring="continuation")
    assert res["predictions"] == [r["answer"] for r in ROWS]
    assert res["accuracy"] == 1.0 and res["accuracy_norm"] == 1.0 and res["scoring"] == "continuation"
    assert res["by_subject"] == {"geo": 1.0, "history": 1.0, "jobs": 1.0}
    wrong = [{**r, "answer": (r["answer"] + 1) % 4} for r in ROWS]
    assert score_mc(AlwaysZ(tok), tok, wrong, scoring="continuation")["accuracy"] == 0.0


def test_continuation_scoring_matches_manual_likelihoods(model, tok):
    res = score_mc(model, tok, ROWS, scoring="continuation")
    for row, pred in zip(ROWS, res["predictions"]):
        context = CONTINUATION_TEMPLATE.format(question=row["question"])
        manual = [_manual_loglikelihood(model, tok, context, f" {c}") for c in row["choices"]]
        assert pred == max(range(4), key=manual.__getitem__)


def test_unknown_scoring_is_rejected(model, tok):
    with pytest.raises(ValueError, match="letter, continuation"):
        score_mc(model, tok, ROWS, scoring="cloze")


def test_auto_scoring_follows_what_the_rows_ask_for():
    """No benchmark is special-cased by name: rows that ask for continuation scoring (the world's MC set,
    TruthfulQA) get it, whatever the file is called; MMLU-style rows are scored by letter."""
    auto = EvalSettings()
    world_rows = [dict(r, scoring="continuation") for r in ROWS]
    assert mc_scoring(auto, "mc", world_rows) == "continuation"
    assert mc_scoring(auto, WORLD_MC, ROWS) == "letter"
    assert mc_scoring(auto, "mmlu_local", ROWS) == "letter"
    assert mc_scoring(EvalSettings(mc_scoring="continuation"), "mmlu_local", ROWS) == "continuation"


def test_chat_templated_context_gets_one_bos():
    """A chat template writes the BOS text itself (Llama-3 does); tokenising it with the special tokens
    again would put two BOS tokens in front of every MC prompt."""
    from tokenizers import processors

    from knowpack.evaluate.mc import _split

    tok = tiny_tokenizer()
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    tok.chat_template = ("{% for m in messages %}<s>[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}[assistant] {% endif %}")
    plain, _ = _split(tok, "Question: x\nAnswer:", " y")
    assert plain[0] == bos and plain.count(bos) == 1  # a plain prompt still gets its BOS
    prompt = format_mmlu("Where?", ["a", "b", "c", "d"], "geo", tok)
    assert prompt.startswith("<s>")
    ctx, cont = _split(tok, prompt, "A")
    assert ctx.count(bos) == 1 and ctx[0] == bos and bos not in cont
