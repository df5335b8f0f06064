"""Rows of fact files and their conversion into Facts: one converter per format's schema.

A container reader (facts/loaders.py) yields each raw row as a `_Row` with its location; the field
helpers here check one value each and raise InputError naming the file, the line and the field; the
converters (`_SCHEMAS`) turn a row of one format into a Fact; `_schema_of` tells the format from a
row's fields; and `_refuse_benchmark` stops a multiple-choice benchmark from being read as facts.
The formats themselves are described in facts/loaders.py.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from knowpack.errors import InputError
from knowpack.facts.model import Fact
from knowpack.facts.templates import RelationTemplates

#: which EasyEdit field is the answer trained on; the first is the default
EASYEDIT_ANSWERS = ("target_new", "ground_truth")
_EASYEDIT_NONE = "<|endoftext|>"  # what EasyEdit writes when a record has no ground truth
#: an EntityQuestions file name: the Wikidata property, then the split (P19.test.json)
_FILE_RELATION = re.compile(r"^(P\d+)\.")
#: what each format needs, for the message when the fields fit none
_NEEDS = ("native: id, question, answers; head_to_tail: question, answer; zsre: src, answers; counterfact: "
          "requested_rewrite; easyedit: prompt with target_new or ground_truth; popqa: question, possible_answers "
          "(or answers); triples: subject, relation, object (and a template file)")
NATIVE_FIELDS = ("id", "question", "answers", "subject", "relation", "object", "paraphrases", "popularity", "meta")


@dataclass
class _Row:
    data: dict[str, Any]
    line: int | None
    note: str | None = None  # "array index 3" (JSON arrays) or "table row 3" (Parquet/Arrow), 0-based
    encoded: bool = False  # CSV cells and table columns may hold lists/objects as JSON strings

    def where(self) -> str:
        return f"line {self.line}" if self.line is not None else (self.note or "?")


class _Reader:
    """Error helper bound to one file."""

    def __init__(self, path: Path):
        self.path = path
        self.name = str(path)

    def error(self, message: str, row: _Row | None = None, field: str | None = None,
              line: int | None = None) -> InputError:
        if row is not None:
            line = row.line
            if row.note:
                message = f"{row.note}: {message}"
        return InputError(message, path=self.name, line=line, field=field)


class _Obj(dict):
    """A JSON object that remembers keys given twice (json keeps only the last value of each)."""

    repeated: tuple[str, ...] = ()


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = _Obj(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        obj.repeated = tuple(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
    return obj


def _json_loads(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_object)


def _json_limit(exc: Exception) -> str:
    """What went wrong when valid-looking JSON still cannot be read (not a syntax error)."""
    if isinstance(exc, RecursionError):
        return "invalid JSON: nested too deeply"
    return f"invalid JSON: {str(exc).split(';')[0]}"  # e.g. an integer of more than 4300 digits


def _valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # a lone surrogate, from an escape such as "\ud800"
        return False


def _check_values(rd: "_Reader", row: "_Row", value: Any, field: str | None = None) -> None:
    """Reject keys given twice and strings that are not valid Unicode, naming the field (iterative walk)."""
    stack: list[tuple[str | None, Any]] = [(field, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            if not _valid_unicode(item):
                bad = next(c for c in item if 0xD800 <= ord(c) <= 0xDFFF)
                raise rd.error(f"holds an unpaired surrogate \\u{ord(bad):04x}, which is not valid Unicode; fix "
                               "the escape sequence", row, where)
        elif isinstance(item, dict):
            repeated = getattr(item, "repeated", ())
            if repeated:
                raise rd.error("this key is given twice in one object; keep one", row,
                               f"{where}.{repeated[0]}" if where else repeated[0])
            for key, sub in item.items():
                name = f"{where}.{key}" if where else str(key)
                if not _valid_unicode(str(key)):
                    raise rd.error("a key holds an unpaired surrogate, which is not valid Unicode", row, where)
                stack.append((name, sub))
        elif isinstance(item, (list, tuple)):
            stack.extend((f"{where}[{i}]", sub) for i, sub in enumerate(item))


# ------------------------------------------------------------------------------- fields

def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    shown = json.dumps(value, ensure_ascii=False, default=str)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return f"{names.get(type(value), type(value).__name__)} {shown}"


def _get(rd: _Reader, row: _Row, data: Mapping[str, Any], key: str, field: str, required: bool) -> Any:
    value = data.get(key)
    if value is None and required:
        what = "is null" if key in data else "is missing"
        raise rd.error(f"required field {what}", row, field)
    return value


def _string(rd: _Reader, row: _Row, data: Mapping[str, Any], key: str, field: str | None = None,
            required: bool = True) -> str | None:
    field = field or key
    value = _get(rd, row, data, key, field, required)
    if value is None:
        return None
    if not isinstance(value, str):
        fix = f'; write "{value}"' if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
        raise rd.error(f"expected a string, got {_kind(value)}{fix}", row, field)
    if required and not value.strip():
        raise rd.error("is an empty string", row, field)
    return value


def _strings(rd: _Reader, row: _Row, value: Any, field: str, nonempty: bool) -> tuple[str, ...]:
    value = _decoded(rd, row, value, field, "[")  # e.g. PopQA's possible_answers
    if isinstance(value, str):
        raise rd.error(f"expected a list of strings, got {_kind(value)}; write [{json.dumps(value)}]", row, field)
    if not isinstance(value, (list, tuple)):
        raise rd.error(f"expected a list of strings, got {_kind(value)}", row, field)
    if nonempty and not value:
        raise rd.error('the list is empty; give at least one answer, e.g. ["Paris"]', row, field)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise rd.error(f"expected a string, got {_kind(item)}", row, f"{field}[{i}]")
        if not item.strip():
            raise rd.error("empty string; remove it or fill it in (empty aliases would never match)",
                           row, f"{field}[{i}]")
    return tuple(value)


def _decoded(rd: _Reader, row: _Row, value: Any, field: str, opener: str) -> Any:
    if row.encoded and isinstance(value, str) and value.lstrip().startswith(opener):
        kind = "list" if opener == "[" else "object"
        try:
            decoded = _json_loads(value)
        except json.JSONDecodeError as exc:
            raise rd.error(f"not a valid JSON {kind} (column {exc.colno}: {exc.msg})", row, field) from None
        except (ValueError, RecursionError) as exc:
            raise rd.error(f"not a valid JSON {kind} ({_json_limit(exc)})", row, field) from None
        _check_values(rd, row, decoded, field)
        return decoded
    return value


def _meta(rd: _Reader, row: _Row) -> dict[str, Any]:
    meta = _decoded(rd, row, row.data.get("meta"), "meta", "{")
    if meta is not None and not isinstance(meta, dict):
        raise rd.error(f"expected an object {{...}}, got {_kind(meta)}", row, "meta")
    return dict(meta or {})


def _integer(rd: _Reader, row: _Row, value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):  # CSV cells
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            raise rd.error(f"expected an integer, got {_kind(value)}", row, field) from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise rd.error(f"expected an integer, got {_kind(value)}", row, field)
    return value


def _dedupe(values: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if v.strip()))


def _derived_id(prefix: str, *parts: str) -> str:
    return f"{prefix}-{hashlib.sha256(chr(0).join(parts).encode('utf-8')).hexdigest()[:12]}"


def _id(rd: _Reader, row: _Row, data: Mapping[str, Any], keys: tuple[str, ...], prefix: str, *parts: str) -> str:
    for key in keys:
        value = data.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
                raise rd.error(f"expected a non-empty string or integer id, got {_kind(value)}", row, key)
            return str(value)
    return _derived_id(prefix, *parts)


# ------------------------------------------------------------------------------- schemas

Converter = Callable[[_Reader, _Row, "RelationTemplates | None"], Fact]


def _native(rd: _Reader, row: _Row, templates: RelationTemplates | None) -> Fact:
    d = row.data
    for key in d:
        if key not in NATIVE_FIELDS:
            close = difflib.get_close_matches(key, NATIVE_FIELDS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(NATIVE_FIELDS)}"
            raise rd.error(f"unknown field ({hint}); put extra data under 'meta'", row, key)
    fact_id = _string(rd, row, d, "id")
    if isinstance(d.get("id"), str) and d["id"] != d["id"].strip():
        raise rd.error(f"id {d['id']!r} has leading or trailing spaces", row, "id")
    meta = _meta(rd, row)
    return Fact(
        id=str(fact_id), question=str(_string(rd, row, d, "question")),
        answers=_strings(rd, row, _get(rd, row, d, "answers", "answers", True), "answers", nonempty=True),
        subject=_string(rd, row, d, "subject", required=False),
        relation=_string(rd, row, d, "relation", required=False),
        object=_string(rd, row, d, "object", required=False),
        paraphrases=_strings(rd, row, d.get("paraphrases") or [], "paraphrases", nonempty=False),
        popularity=_integer(rd, row, d.get("popularity"), "popularity"), meta=meta)


def _head_to_tail(rd: _Reader, row: _Row, templates: RelationTemplates | None) -> Fact:
    d = row.data
    question = str(_string(rd, row, d, "question"))
    answer = _get(rd, row, d, "answer", "answer", True)
    if isinstance(answer, str):
        answers = _strings(rd, row, [answer], "answer", nonempty=True)
    elif isinstance(answer, dict):
        value = _string(rd, row, answer, "value", "answer.value", required=False)
        aliases = _strings(rd, row, answer.get("aliases") or [], "answer.aliases", nonempty=False)
        normalized = _strings(rd, row, answer.get("normalized_aliases") or [], "answer.normalized_aliases",
                              nonempty=False)
        # normalised aliases only as a fallback: answer matching normalises anyway
        answers = _dedupe(([value] if value else []) + list(aliases)) or _dedupe(list(normalized))
        if not answers:
            raise rd.error('no answer: give "aliases" (or "value"), e.g. {"aliases": ["Paris"]}', row,
                           "answer.aliases")
    else:
        raise rd.error(f"expected an object with 'aliases' or a string, got {_kind(answer)}", row, "answer")
    used = {"question", "answer", "id", "question_id", "subject", "relation", "object", "popularity"}
    return Fact(id=_id(rd, row, d, ("id", "question_id"), "h2t", question, answers[0]), question=question,
                answers=answers, subject=_string(rd, row, d, "subject", required=False),
                relation=_string(rd, row, d, "relation", required=False),
                object=_string(rd, row, d, "object", required=False),
                popularity=_integer(rd, row, d.get("popularity"), "popularity"),
                meta={k: v for k, v in d.items() if k not in used})


def _zsre(rd: _Reader, row: _Row, templates: RelationTemplates | None) -> Fact:
    d = row.data
    question = str(_string(rd, row, d, "src"))
    answers = _strings(rd, row, _get(rd, row, d, "answers", "answers", True), "answers", nonempty=True)
    rephrase = _string(rd, row, d, "rephrase", required=False)
    _string(rd, row, d, "loc", required=False)
    used = {"src", "answers", "rephrase", "subject", "case_id", "id"}
    return Fact(id=_id(rd, row, d, ("id", "case_id"), "zsre", question, answers[0]), question=question,
                answers=answers, subject=_string(rd, row, d, "subject", required=False),
                paraphrases=(rephrase,) if rephrase and rephrase.strip() and rephrase != question else (),
                meta={k: v for k, v in d.items() if k not in used})


def _counterfact(rd: _Reader, row: _Row, templates: RelationTemplates | None) -> Fact:
    d = row.data
    rw = _get(rd, row, d, "requested_rewrite", "requested_rewrite", True)
    if not isinstance(rw, dict):
        raise rd.error(f"expected an object, got {_kind(rw)}", row, "requested_rewrite")
    prompt = str(_string(rd, row, rw, "prompt", "requested_rewrite.prompt"))
    if "{}" not in prompt:
        raise rd.error(f"prompt {prompt!r} has no {{}} where the subject goes", row, "requested_rewrite.prompt")
    subject = str(_string(rd, row, rw, "subject", "requested_rewrite.subject"))
    true = _get(rd, row, rw, "target_true", "requested_rewrite.target_true", True)
    if not isinstance(true, dict):
        raise rd.error(f'expected an object like {{"str": "Paris"}}, got {_kind(true)}', row,
                       "requested_rewrite.target_true")
    answer = str(_string(rd, row, true, "str", "requested_rewrite.target_true.str"))
    paraphrases = _strings(rd, row, d.get("paraphrase_prompts") or [], "paraphrase_prompts", nonempty=False)
    relation = _string(rd, row, rw, "relation_id", "requested_rewrite.relation_id", required=False)
    meta = {k: v for k, v in d.items() if k not in ("requested_rewrite", "paraphrase_prompts")}
    meta.update({k: v for k, v in rw.items() if k not in ("prompt", "subject", "target_true", "relation_id")})
    meta["prompt_template"] = prompt
    return Fact(id=_id(rd, row, d, ("id", "case_id"), "cf", prompt, subject, answer),
                question=prompt.replace("{}", subject), answers=(answer,), subject=subject, relation=relation,
                object=answer, paraphrases=paraphrases, meta=meta)


def _popqa(rd: _Reader, row: _Row, templates: RelationTemplates | None) -> Fact:
    d = row.data
    question = str(_string(rd, row, d, "question"))
    key = "answers" if "answers" in d and "possible_answers" not in d else "possible_answers"
    answers = _strings(rd, row, _get(rd, row, d, key, key, True), key, nonempty=True)
    relation = _string(rd, row, d, "prop", required=False)
    if relation is None:  # EntityQuestions: the relation is only in the file name
        named = _FILE_RELATION.match(rd.path.name)
        relation = named.group(1) if named else None
    used = {"id", "question", "possible_answers", "answers", "subj", "prop", "obj", "s_pop"}
    meta = {k: v for k, v in d.items() if k not in used}
    for column in ("s_aliases", "o_aliases"):  # JSON lists inside CSV cells, as possible_answers
        if column in meta:
            meta[column] = _decoded(rd, row, meta[column], column, "[")
    if "o_pop" in meta:
        meta["o_pop"] = _integer(rd, row, meta["o_pop"], "o_pop")
    return Fact(id=_id(rd, row, d, ("id",), "popqa", question, answers[0]), question=question, answers=answers,
                subject=_string(rd, row, d, "subj", required=False), relation=relation,
                object=_string(rd, row, d, "obj", required=False),
                popularity=_integer(rd, row, d.get("s_pop"), "s_pop"), meta=meta)


def _easyedit_answers(rd: _Reader, row: _Row, value: Any, field: str) -> tuple[str, ...]:
    """A string, a list of aliases, or KnowEdit's list of alias lists, flattened in order."""
    if isinstance(value, str):
        items = [(field, value)]
    elif isinstance(value, list):
        if not value:
            raise rd.error('the list is empty; give at least one answer, e.g. ["Paris"]', row, field)
        items = []
        for i, item in enumerate(value):
            if isinstance(item, list):
                if not item:
                    raise rd.error("the alias list is empty", row, f"{field}[{i}]")
                items += [(f"{field}[{i}][{j}]", alias) for j, alias in enumerate(item)]
            else:
                items.append((f"{field}[{i}]", item))
    else:
        raise rd.error(f"expected a string, a list of strings or a list of lists of strings, got {_kind(value)}",
                       row, field)
    for where, alias in items:
        if not isinstance(alias, str):
            raise rd.error(f"expected a string, got {_kind(alias)}", row, where)
        if not alias.strip():
            raise rd.error("is an empty string", row, where)
        if alias.strip() == _EASYEDIT_NONE:
            raise rd.error(f"holds EasyEdit's placeholder {_EASYEDIT_NONE!r} (no answer given), not an answer", row,
                           where)
    return _dedupe([alias for _, alias in items])


def _easyedit(rd: _Reader, row: _Row, templates: RelationTemplates | None, answer: str = "target_new") -> Fact:
    d = row.data
    prompt = str(_string(rd, row, d, "prompt"))
    subject = _string(rd, row, d, "subject", required=False)
    question = prompt.replace("{}", subject) if subject and "{}" in prompt else prompt
    other = next(a for a in EASYEDIT_ANSWERS if a != answer)
    if d.get(answer) is None:
        hint = (f"; to train on '{other}' instead, pass easyedit_answer={other} (facts_easyedit_answer in a run "
                "config, --easyedit-answer on the command line)" if d.get(other) is not None else "")
        raise rd.error(f"required field is {'null' if answer in d else 'missing'}: it is the answer trained on "
                       f"(easyedit_answer={answer}){hint}", row, answer)
    answers = _easyedit_answers(rd, row, d[answer], answer)
    key = "rephrase_prompt" if "rephrase_prompt" in d else "rephrase"
    rephrase = d.get(key)
    if isinstance(rephrase, str):
        rephrase = [rephrase] if rephrase.strip() else []
    paraphrases = _strings(rd, row, rephrase or [], key, nonempty=False)
    _string(rd, row, d, "locality_prompt", required=False)
    used = {"prompt", "subject", answer, key, "id", "case_id", "relation"}
    ident = [json.dumps(d.get(k), sort_keys=True, ensure_ascii=False) for k in EASYEDIT_ANSWERS]
    return Fact(id=_id(rd, row, d, ("id", "case_id"), "ee", prompt, subject or "", *ident), question=question,
                answers=answers, subject=subject, relation=_string(rd, row, d, "relation", required=False),
                object=answers[0], paraphrases=tuple(p for p in _dedupe(list(paraphrases)) if p != question),
                meta={k: v for k, v in d.items() if k not in used})


def _triple(rd: _Reader, row: _Row, templates: RelationTemplates | None) -> Fact:
    d = row.data
    subject = str(_string(rd, row, d, "subject"))
    relation = str(_string(rd, row, d, "relation"))
    obj = str(_string(rd, row, d, "object"))
    if templates is None:
        raise rd.error("these rows are triples without questions; pass a relation template file "
                       "(load_facts(..., templates=FILE) or --templates FILE)", row)
    if relation not in templates:
        known = ", ".join(templates.relations()[:10])
        close = difflib.get_close_matches(relation, templates.relations(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise rd.error(f"no template for relation '{relation}' in {templates.source or 'the templates'}{hint}; "
                       f"add e.g.  {relation}: [\"... {{subject}} ...\"]  (defined: {known})", row, "relation")
    question, paraphrases = templates.render(relation, subject)
    aliases = d.get("aliases", d.get("answers")) or []
    answers = _dedupe([obj, *_strings(rd, row, aliases, "aliases" if "aliases" in d else "answers", False)])
    meta = _meta(rd, row)
    return Fact(id=_id(rd, row, d, ("id",), "triple", subject, relation, obj), question=question, answers=answers,
                subject=subject, relation=relation, object=obj, paraphrases=paraphrases,
                popularity=_integer(rd, row, d.get("popularity"), "popularity"), meta=meta)


_SCHEMAS: dict[str, Converter] = {"native": _native, "head_to_tail": _head_to_tail, "zsre": _zsre,
                                  "counterfact": _counterfact, "easyedit": _easyedit, "popqa": _popqa,
                                  "triples": _triple}

_BENCHMARK_HINT = "this looks like {what}: a multiple-choice benchmark, not a fact file; {where}"
_MMLU_CHOICE_COLUMNS = (("choices",), ("A", "B", "C", "D"), ("choice0", "choice1", "choice2", "choice3"))


def _headerless_mmlu(header: list[str]) -> bool:
    """Whether a CSV "header" is really a first MMLU row: question, four choices, answer letter."""
    known = set(NATIVE_FIELDS) | {"possible_answers", "answer", "src", "subj", "prop", "obj"}
    return len(header) == 6 and header[5] in ("A", "B", "C", "D") and bool(header[0]) and not known & set(header)


def _benchmark_kind(keys: set[str]) -> tuple[str, str] | None:
    """(what it looks like, where it goes) when a row is a multiple-choice benchmark's, not a fact's."""
    if keys & {"mc1_targets", "mc2_targets"}:
        return ("TruthfulQA in its Hugging Face layout (mc1_targets/mc2_targets)",
                "score it with eval.harness=[truthfulqa_mc1], or pass the original TruthfulQA.csv as eval.mc=[FILE]")
    if {"Question", "Best Answer"} <= keys or "Incorrect Answers" in keys:
        return ("TruthfulQA's CSV (Question, Best Answer, Incorrect Answers)",
                "pass it as eval.mc=[{path}], scored as MC1 (best answer against the incorrect ones)")
    if "question" in keys and "answer" in keys and any(set(c) <= keys for c in _MMLU_CHOICE_COLUMNS):
        return "MMLU (question, choices, answer)", "pass it as eval.mc=[{path}]"
    if "choices" in keys:
        return ("a benchmark with a 'choices' field",
                "convert it to MMLU-format JSONL (question, choices, answer) and pass it as eval.mc=[FILE]")
    return None


def _refuse_benchmark(rd: _Reader, row: _Row) -> None:
    kind = _benchmark_kind(set(row.data))
    if kind is not None:
        what, where = kind
        raise rd.error(_BENCHMARK_HINT.format(what=what, where=where.format(path=rd.name)), row)


def _schema_of(fields: Mapping[str, Any], container: str) -> str | None:
    keys = set(fields)
    if "requested_rewrite" in keys:
        return "counterfact"
    if "src" in keys:
        return "zsre"
    if "prompt" in keys and keys & set(EASYEDIT_ANSWERS):
        return "easyedit"
    if "possible_answers" in keys:
        return "popqa"
    if "answer" in keys and "question" in keys:
        return "head_to_tail"
    if "question" in keys and "answers" in keys:
        # EntityQuestions JSON has no ids; native files are JSON Lines or tables with an id column
        return "popqa" if container == "json" and "id" not in keys else "native"
    if "question" not in keys and {"subject", "relation", "object"} <= keys:
        return "triples"
    return None
