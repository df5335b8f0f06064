"""Multiple-choice benchmarks on MMLU-format rows, scored in one of two ways lm-eval uses.

Rows are MMLU-format: `question`, `choices` (4 strings), `answer` (0-3), `subject`.

- `letter` (default for user files; how lm-eval scores `mmlu`): the prompt is the zero-shot template
  of SPEC §5.1 (also KVA's default data) listing the choices; each letter A-D is scored as the
  continuation of the prompt and the likeliest letter is the prediction.
- `continuation` (in the style of lm-eval's `mmlu_continuation`, and of how ARC or TruthfulQA MC1 are
  scored): the prompt is `Question: {question}\nAnswer:` without the choices, each choice text is
  scored as its continuation (" {choice}") and the likeliest choice is the prediction, by summed
  log-likelihood (`accuracy`) and per character (`accuracy_norm`). It needs no skill at the
  letter format, only the knowledge: the embedded world's tiny base model has never learnt to match
  a recalled answer to a letter, so its MC benchmark is scored this way.

Trailing whitespace of a prompt moves into the continuation ("Answer:" + " A"), as lm-eval does, so
tokenizers that merge a space into the next word score the token the model actually saw in training.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from knowpack.errors import InputError
from knowpack.models import special_tokens_for

log = logging.getLogger(__name__)

LETTERS = ("A", "B", "C", "D")
SCORINGS = ("letter", "continuation")
CONTINUATION_TEMPLATE = "Question: {question}\nAnswer:"
MMLU_TEMPLATE = (
    "There is a single choice question about {subject}. Answer the question by replying A, B, C or D.\n"
    "Question: {question}\nChoices:\nA. {c0}\nB. {c1}\nC. {c2}\nD. {c3}\nAnswer: "
)


def format_mmlu(question: str, choices: Sequence[str], subject: str, tokenizer: Any = None) -> str:
    """The zero-shot MMLU prompt of SPEC §5.1; a user turn with the generation prompt for chat models."""
    text = MMLU_TEMPLATE.format(subject=subject.replace("_", " "), question=question,
                                c0=choices[0], c1=choices[1], c2=choices[2], c3=choices[3])
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text


def load_mc(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate an MMLU-format JSONL file; errors name the file, line and field."""
    path = Path(path)
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError("file not found", path=str(path)) from None
    except UnicodeDecodeError as exc:
        raise InputError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})", path=str(path)) from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON: {exc.msg} at column {exc.colno}", path=str(path), line=n) from None
        if not isinstance(row, dict):
            raise InputError("expected a JSON object", path=str(path), line=n)
        if not isinstance(row.get("question"), str) or not row["question"].strip():
            raise InputError("missing or empty string", path=str(path), line=n, field="question")
        choices = row.get("choices")
        if not (isinstance(choices, list) and len(choices) == 4 and all(isinstance(c, str) for c in choices)):
            raise InputError("expected a list of 4 strings", path=str(path), line=n, field="choices")
        if not (isinstance(row.get("answer"), int) and 0 <= row["answer"] <= 3):
            raise InputError("expected an integer 0-3", path=str(path), line=n, field="answer")
        row.setdefault("subject", "general knowledge")
        rows.append(row)
    if not rows:
        raise InputError("the file holds no questions", path=str(path))
    return rows


def _split(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    stripped = context.rstrip(" ")
    continuation = context[len(stripped):] + continuation
    special = special_tokens_for(tokenizer, stripped)  # a chat-templated context holds its own BOS
    ctx = tokenizer(stripped, add_special_tokens=special)["input_ids"]
    full = tokenizer(stripped + continuation, add_special_tokens=special)["input_ids"]
    if full[:len(ctx)] != ctx:  # a merge across the boundary: score the continuation alone
        return ctx, tokenizer(continuation, add_special_tokens=False)["input_ids"]
    return ctx, full[len(ctx):]


@torch.no_grad()
def letter_loglikelihoods(model: Any, tokenizer: Any, prompts: Sequence[str], *, batch_size: int = 32) -> torch.Tensor:
    """[N, 4] log-likelihoods of the letters A-D as continuations of each prompt."""
    return loglikelihoods(model, tokenizer, [(p, letter) for p in prompts for letter in LETTERS],
                          batch_size=batch_size * 4).view(len(prompts), len(LETTERS))


@torch.no_grad()
def loglikelihoods(model: Any, tokenizer: Any, requests: Sequence[tuple[str, str]], *,
                   batch_size: int = 128) -> torch.Tensor:
    """[N] summed log-likelihood of each continuation given its context, `(context, continuation)` pairs."""
    pairs = [_split(tokenizer, context, continuation) for context, continuation in requests]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = torch.empty(len(pairs))
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        seqs = [c + x for c, x in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):  # right padding: positions stay 0..len-1 without position_ids
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        logp = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().log_softmax(-1).cpu()
        for i, (c, x) in enumerate(chunk):
            positions = torch.arange(len(c) - 1, len(c) + len(x) - 1)
            out[start + i] = logp[i, positions, torch.tensor(x)].sum()
    return out


def score_mc(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], *, batch_size: int = 32,
             chat: bool | None = None, scoring: str = "letter") -> dict[str, Any]:
    """Accuracy (and per-subject accuracy) of the likeliest letter or choice; chance is 0.25."""
    if scoring == "continuation":
        return _score_continuation(model, tokenizer, rows, batch_size=batch_size)
    if scoring != "letter":
        raise ValueError(f"unknown MC scoring '{scoring}'; use one of {', '.join(SCORINGS)}")
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    prompts = [format_mmlu(r["question"], r["choices"], r.get("subject", "general knowledge"),
                           tokenizer if use_chat else None) for r in rows]
    ll = letter_loglikelihoods(model, tokenizer, prompts, batch_size=batch_size)
    preds = ll.argmax(-1).tolist()
    return {**_accuracy(rows, preds), "scoring": "letter",
            "definition": "share of questions whose likeliest answer letter (log-likelihood of the letter "
                          "after the zero-shot MMLU prompt) is the gold one; denominator = n"}


def _accuracy(rows: Sequence[dict[str, Any]], preds: list[int]) -> dict[str, Any]:
    correct = [p == r["answer"] for p, r in zip(preds, rows)]
    by_subject: dict[str, list[bool]] = {}
    for r, ok in zip(rows, correct):
        by_subject.setdefault(r.get("subject", "general knowledge"), []).append(ok)
    return {"accuracy": sum(correct) / len(rows), "n": len(rows), "chance": 0.25, "predictions": preds,
            "by_subject": {s: sum(v) / len(v) for s, v in sorted(by_subject.items())}}


def _score_continuation(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], *,
                        batch_size: int) -> dict[str, Any]:
    requests = [(CONTINUATION_TEMPLATE.format(question=r["question"]), f" {c}") for r in rows for c in r["choices"]]
    ll = loglikelihoods(model, tokenizer, requests, batch_size=batch_size * 4).view(len(rows), 4)
    chars = torch.tensor([[len(c) + 1 for c in r["choices"]] for r in rows], dtype=ll.dtype)
    preds = ll.argmax(-1).tolist()
    norm = [p == r["answer"] for p, r in zip((ll / chars).argmax(-1).tolist(), rows)]
    return {**_accuracy(rows, preds), "accuracy_norm": sum(norm) / len(rows), "scoring": "continuation",
            "definition": "share of questions whose likeliest choice text (summed log-likelihood of ' {choice}' "
                          "after 'Question: {question}\\nAnswer:', choices not shown) is the gold one; "
                          "accuracy_norm divides by the choice's length in characters; denominator = n"}
