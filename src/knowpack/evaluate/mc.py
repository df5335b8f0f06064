"""Multiple-choice benchmarks scored by answer-letter log-likelihood, the way lm-eval scores `mmlu`.

Rows are MMLU-format: `question`, `choices` (4 strings), `answer` (0-3), `subject`. The prompt is
the zero-shot template of SPEC §5.1 (also KVA's default data); each letter is scored as the
continuation of the prompt, and the likeliest letter is the prediction. Trailing whitespace of the
prompt moves into the continuation ("Answer:" + " A"), as lm-eval does, so tokenizers that merge a
space into the next word score the token the model actually saw in training.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from knowpack.errors import InputError

log = logging.getLogger(__name__)

LETTERS = ("A", "B", "C", "D")
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
    ctx = tokenizer(stripped)["input_ids"]
    full = tokenizer(stripped + continuation)["input_ids"]
    if full[:len(ctx)] != ctx:  # a merge across the boundary: score the continuation alone
        return ctx, tokenizer(continuation, add_special_tokens=False)["input_ids"]
    return ctx, full[len(ctx):]


@torch.no_grad()
def letter_loglikelihoods(model: Any, tokenizer: Any, prompts: Sequence[str], *, batch_size: int = 32) -> torch.Tensor:
    """[N, 4] log-likelihoods of the letters A-D as continuations of each prompt."""
    pairs = [_split(tokenizer, p, letter) for p in prompts for letter in LETTERS]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = torch.empty(len(pairs))
    for start in range(0, len(pairs), batch_size * 4):
        chunk = pairs[start:start + batch_size * 4]
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
    return out.view(len(prompts), len(LETTERS))


def score_mc(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], *, batch_size: int = 32,
             chat: bool | None = None) -> dict[str, Any]:
    """Accuracy (and per-subject accuracy) of the likeliest letter; chance is 0.25."""
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    prompts = [format_mmlu(r["question"], r["choices"], r.get("subject", "general knowledge"),
                           tokenizer if use_chat else None) for r in rows]
    ll = letter_loglikelihoods(model, tokenizer, prompts, batch_size=batch_size)
    preds = ll.argmax(-1).tolist()
    correct = [p == r["answer"] for p, r in zip(preds, rows)]
    by_subject: dict[str, list[bool]] = {}
    for r, ok in zip(rows, correct):
        by_subject.setdefault(r.get("subject", "general knowledge"), []).append(ok)
    return {"accuracy": sum(correct) / len(rows), "n": len(rows), "chance": 0.25, "predictions": preds,
            "by_subject": {s: sum(v) / len(v) for s, v in sorted(by_subject.items())},
            "definition": "share of questions whose likeliest answer letter (log-likelihood of the letter "
                          "after the zero-shot MMLU prompt) is the gold one; denominator = n"}
