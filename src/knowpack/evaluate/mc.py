"""Multiple-choice benchmarks on MMLU-format rows, scored in one of two ways lm-eval uses.

Rows are MMLU-format: `question`, `choices` (4 strings; any number from 2 for rows scored by
continuation), `answer` (index of the gold choice), `subject`, and optionally `scoring`, the way the
row must be scored (`continuation` for TruthfulQA MC1).

`load_mc` reads, with errors naming the file, line and field:
- MMLU-format JSONL (the native layout, exactly 4 choices);
- MMLU's original CSV files: no header, `question, A, B, C, D, answer letter`, one file per subject
  named like `astronomy_test.csv`; the subject is the file name without `_test`/`_val`/`_dev`,
  underscores kept as in `cais/mmlu`'s `subject` column and lm-eval's task names (the prompt shows
  them as spaces); a directory of such files reads every subject;
- a CSV with a header row: `question`, optional `subject`, the choices as one `choices` column (a
  JSON list; a Python list as pandas writes it is read too) or as columns `A`-`D` or
  `choice0`-`choice3`, and `answer` as a 0-based index (as `cais/mmlu`) or a letter;
- a Parquet file with `cais/mmlu`'s columns (`question`, `subject`, `choices`, `answer`);
- TruthfulQA's CSV (`Type, Category, Question, Best Answer, Correct Answers, Incorrect Answers,
  Source`), read as MC1: the best answer against the `; `-separated incorrect ones, the category
  as subject. The choices are put in an order fixed by a hash of their text, so the gold one is
  not always first (a tie, as a degenerate model gives, would otherwise count as correct), and each
  row asks for continuation scoring, as lm-eval scores `truthfulqa_mc1`.

Scoring, chosen per benchmark (`eval.mc_scoring`, evaluate/stage.py `mc_scoring`):
- `letter` (default for user files; how lm-eval scores `mmlu`; exactly 4 choices): the prompt is the
  zero-shot template of SPEC §5.1 (also KVA's default data) listing the choices; each letter A-D is
  scored as the continuation of the prompt and the likeliest letter is the prediction.
- `continuation` (in the style of lm-eval's `mmlu_continuation`, and of how ARC or TruthfulQA MC1 are
  scored; any number of choices): the prompt is `Question: {question}\nAnswer:` without the choices,
  each choice text is scored as its continuation (" {choice}") and the likeliest choice is the
  prediction, by summed log-likelihood (`accuracy`) and per character (`accuracy_norm`); chance is
  the mean of 1/(number of choices). It needs no skill at the
  letter format, only the knowledge: the embedded world's tiny base model has never learnt to match
  a recalled answer to a letter, so its MC benchmark is scored this way.

Trailing whitespace of a prompt moves into the continuation ("Answer:" + " A"), as lm-eval does, so
tokenizers that merge a space into the next word score the token the model actually saw in training.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import logging
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from knowpack.errors import InputError, KnowpackError
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
    """Read and validate a multiple-choice benchmark in any layout of the module docstring.

    A directory reads its CSV files in name order; `.csv` and `.parquet` files by their layout;
    anything else as MMLU-format JSONL. Errors name the file, line and field.
    """
    path = Path(path)
    if path.is_dir():
        return _load_mc_directory(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _load_mc_csv(path)
    if suffix in (".parquet", ".pq"):
        return _load_mc_parquet(path)
    return _load_mc_jsonl(path)


def _load_mc_jsonl(path: Path) -> list[dict[str, Any]]:
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


# --- other MC layouts ------------------------------------------------------------------------

_SPLIT_SUFFIX = re.compile(r"_(test|val|dev)$")
_TRUTHFULQA_COLUMNS = ("Question", "Best Answer", "Incorrect Answers")
_CHOICE_COLUMNS = (("a", "b", "c", "d"), ("choice0", "choice1", "choice2", "choice3"))


def wants_continuation(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether a benchmark must be scored by continuation: a row asks for it or has not 4 choices."""
    return any(r.get("scoring") == "continuation" or len(r["choices"]) != len(LETTERS) for r in rows)


def check_scoring(rows: Sequence[dict[str, Any]], scoring: str, name: str) -> None:
    """Refuse letter scoring of a benchmark whose rows need continuation scoring (see `wants_continuation`)."""
    if scoring == "letter" and wants_continuation(rows):
        row = next(r for r in rows if r.get("scoring") == "continuation" or len(r["choices"]) != len(LETTERS))
        why = (f"a question has {len(row['choices'])} choices, and letter scoring needs exactly 4 (A-D)"
               if len(row["choices"]) != len(LETTERS) else "its rows ask for continuation scoring (TruthfulQA MC1)")
        raise KnowpackError(f"benchmark '{name}' cannot be scored by letter: {why}; set eval.mc_scoring=auto or "
                            "eval.mc_scoring=continuation")


def _file_subject(path: Path) -> str | None:
    """MMLU's subject from a file name such as `high_school_biology_test.csv`."""
    stem = path.stem
    return _SPLIT_SUFFIX.sub("", stem) if _SPLIT_SUFFIX.search(stem) else None


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError("file not found", path=str(path)) from None
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise InputError(f"not valid UTF-8 ({exc.reason} at byte {exc.start}); save the file as UTF-8",
                         path=str(path), line=raw.count(b"\n", 0, exc.start) + 1) from None


def _csv_records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line where the record starts, cells) of each non-blank CSV record."""
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    start = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InputError(f"invalid CSV: {exc}", path=str(path), line=start) from None
        if any(c.strip() for c in cells):
            yield start, cells
        start = reader.line_num + 1


def _load_mc_directory(path: Path) -> list[dict[str, Any]]:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
    if not files:
        raise InputError("no CSV files in this directory; for MMLU's original archive point to its test/ (or val/, "
                         "dev/) folder, which holds one CSV per subject", path=str(path))
    rows = [row for f in files for row in _load_mc_csv(f)]
    if len({r.get("scoring") for r in rows}) > 1:
        raise InputError("the directory mixes files scored differently (TruthfulQA and MMLU); pass each as its own "
                         "eval.mc entry", path=str(path))
    return rows


def _load_mc_csv(path: Path) -> list[dict[str, Any]]:
    records = list(_csv_records(path))
    if not records:
        raise InputError("the file holds no questions", path=str(path))
    names = [c.strip() for c in records[0][1]]
    if set(_TRUTHFULQA_COLUMNS) <= set(names):
        rows = _truthfulqa_rows(path, names, records[1:])
    elif "question" in {n.lower() for n in names}:
        rows = _mmlu_header_rows(path, names, records[1:])
    else:
        rows = _mmlu_original_rows(path, records)
    if not rows:
        raise InputError("the file has a header but no questions", path=str(path), line=1)
    return rows


def _cells(path: Path, line: int, cells: list[str], width: int, layout: str) -> list[str]:
    if len(cells) != width:
        raise InputError(f"the row has {len(cells)} fields, {layout} has {width}; quote values that contain a comma",
                         path=str(path), line=line)
    return cells


def _question(path: Path, line: int, text: str, field: str) -> str:
    if not text.strip():
        raise InputError("missing or empty question", path=str(path), line=line, field=field)
    return text


def _mmlu_original_rows(path: Path, records: list[tuple[int, list[str]]]) -> list[dict[str, Any]]:
    subject = _file_subject(path) or "general knowledge"
    rows = []
    for line, cells in records:
        question, *choices, letter = _cells(path, line, cells, 6, "MMLU's header-less layout (question, A, B, C, "
                                                                 "D, answer letter)")
        if letter.strip() not in LETTERS:
            raise InputError(f"expected the answer letter A, B, C or D, got {letter!r}", path=str(path), line=line,
                             field="answer")
        rows.append({"question": _question(path, line, question, "question"), "choices": choices,
                     "answer": LETTERS.index(letter.strip()), "subject": subject})
    return rows


def _choice_list(path: Path, line: int, text: str) -> list[str]:
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text.strip())  # pandas writes a list column as its Python repr
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            value = None
    if not (isinstance(value, list) and len(value) == len(LETTERS) and all(isinstance(c, str) for c in value)):
        got = f"a list of {len(value)}" if isinstance(value, list) else repr(text[:40])
        raise InputError(f'expected a JSON list of 4 strings, e.g. ["a", "b", "c", "d"], got {got}; a list '
                         "written without commas (numpy's repr) cannot be split, so export the column as JSON",
                         path=str(path), line=line, field="choices")
    return value


def _mmlu_header_rows(path: Path, names: list[str], records: list[tuple[int, list[str]]]) -> list[dict[str, Any]]:
    col = {n.lower(): i for i, n in enumerate(names)}
    if "answer" not in col:
        raise InputError("no 'answer' column (the gold choice: an index 0-3 or a letter A-D)", path=str(path),
                         line=1)
    choice_cols = next(([col[c] for c in group] for group in _CHOICE_COLUMNS if set(group) <= set(col)), None)
    if "choices" not in col and choice_cols is None:
        raise InputError("no choices: expected a 'choices' column (a JSON list of 4) or columns A, B, C, D or "
                         "choice0-choice3", path=str(path), line=1)
    default_subject = _file_subject(path) or "general knowledge"
    rows = []
    for line, cells in records:
        cells = _cells(path, line, cells, len(names), "the header")
        question = _question(path, line, cells[col["question"]], names[col["question"]])
        if choice_cols is not None:
            choices = [cells[i] for i in choice_cols]
        else:
            choices = _choice_list(path, line, cells[col["choices"]])
        answer = cells[col["answer"]].strip()
        if answer in LETTERS:
            index = LETTERS.index(answer)
        elif answer in ("0", "1", "2", "3"):
            index = int(answer)
        else:
            raise InputError(f"expected an index 0-3 or a letter A-D, got {answer!r}", path=str(path), line=line,
                             field=names[col["answer"]])
        subject = cells[col["subject"]].strip() if "subject" in col else ""
        rows.append({"question": question, "choices": choices, "answer": index,
                     "subject": subject or default_subject})
    return rows


def _truthfulqa_rows(path: Path, names: list[str], records: list[tuple[int, list[str]]]) -> list[dict[str, Any]]:
    col = {n: i for i, n in enumerate(names)}
    rows = []
    for line, cells in records:
        cells = _cells(path, line, cells, len(names), "the header")
        question = _question(path, line, cells[col["Question"]], "Question")
        best = cells[col["Best Answer"]].strip()
        if not best:
            raise InputError("missing or empty best answer", path=str(path), line=line, field="Best Answer")
        wrong = [a.strip() for a in cells[col["Incorrect Answers"]].split("; ")]
        wrong = [a for a in dict.fromkeys(wrong) if a and a != best]
        if not wrong:
            raise InputError("no incorrect answers: MC1 needs at least one to score the best answer against",
                             path=str(path), line=line, field="Incorrect Answers")
        choices = [best, *wrong]
        order = sorted(range(len(choices)),
                       key=lambda i: hashlib.sha256(f"{question}\x00{choices[i]}".encode()).hexdigest())
        category = cells[col["Category"]].strip() if "Category" in col else ""
        rows.append({"question": question, "choices": [choices[i] for i in order], "answer": order.index(0),
                     "subject": category or "truthfulqa", "scoring": "continuation"})
    return rows


def _load_mc_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    if not path.exists():
        raise InputError("file not found", path=str(path))
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types; report the reason, keep no traceback
        raise InputError(f"not a readable Parquet file ({type(exc).__name__}: {exc})", path=str(path)) from None
    rows = []
    for n, row in enumerate(table.to_pylist(), 1):
        where = dict(path=str(path), line=n)
        if not isinstance(row.get("question"), str) or not row["question"].strip():
            raise InputError(f"table row {n - 1}: missing or empty string", **where, field="question")
        choices = row.get("choices")
        if not (isinstance(choices, list) and len(choices) == 4 and all(isinstance(c, str) for c in choices)):
            raise InputError(f"table row {n - 1}: expected a list of 4 strings", **where, field="choices")
        answer = row.get("answer")
        if not (isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer <= 3):
            raise InputError(f"table row {n - 1}: expected an integer 0-3", **where, field="answer")
        subject = row.get("subject") if isinstance(row.get("subject"), str) and row["subject"] else None
        rows.append({"question": row["question"], "choices": choices, "answer": answer,
                     "subject": subject or _file_subject(path) or "general knowledge"})
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
    """Accuracy (and per-subject accuracy) of the likeliest letter or choice; chance is the mean of 1/choices."""
    if scoring == "continuation":
        return _score_continuation(model, tokenizer, rows, batch_size=batch_size)
    if scoring != "letter":
        raise ValueError(f"unknown MC scoring '{scoring}'; use one of {', '.join(SCORINGS)}")
    bad = next((i for i, r in enumerate(rows) if len(r["choices"]) != len(LETTERS)), None)
    if bad is not None:
        raise KnowpackError(f"letter scoring needs exactly 4 choices (A-D); question {bad} has "
                            f"{len(rows[bad]['choices'])}: score it by continuation")
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
    chance = sum(1 / len(r["choices"]) for r in rows) / len(rows)
    return {"accuracy": sum(correct) / len(rows), "n": len(rows), "chance": chance, "predictions": preds,
            "by_subject": {s: sum(v) / len(v) for s, v in sorted(by_subject.items())}}


def _score_continuation(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], *,
                        batch_size: int) -> dict[str, Any]:
    requests = [(CONTINUATION_TEMPLATE.format(question=r["question"]), f" {c}") for r in rows for c in r["choices"]]
    ll = loglikelihoods(model, tokenizer, requests, batch_size=batch_size * 4)
    per_row = ll.split([len(r["choices"]) for r in rows])  # rows may have any number of choices
    preds = [int(x.argmax()) for x in per_row]
    # per character of the choice text, as lm-eval's acc_norm (the leading space not counted)
    chars = [torch.tensor([len(c) for c in r["choices"]], dtype=ll.dtype) for r in rows]
    norm = [int((x / n).argmax()) == r["answer"] for x, n, r in zip(per_row, chars, rows)]
    return {**_accuracy(rows, preds), "accuracy_norm": sum(norm) / len(rows), "scoring": "continuation",
            "definition": "share of questions whose likeliest choice text (summed log-likelihood of ' {choice}' "
                          "after 'Question: {question}\\nAnswer:', choices not shown) is the gold one; "
                          "accuracy_norm divides by the choice's length in characters; denominator = n"}
