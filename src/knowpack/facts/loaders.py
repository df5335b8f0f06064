"""Fact loaders: read common fact formats into a FactSet, with errors that name file, line and field.

    facts = load_facts("facts.jsonl")                           # format detected: native
    facts = load_facts("zsre_eval.json", "zsre")
    facts = load_facts("triples.csv", templates="relations.yaml")

Formats (SPEC §1): ``native`` JSONL; ``head_to_tail`` (``question``, ``answer.aliases``,
``answer.normalized_aliases``); EasyEdit ``zsre`` and ``counterfact`` JSON; ``popqa`` /
EntityQuestions CSV or JSON (``question``, ``possible_answers`` or ``answers``); ``parquet`` files
and ``hf_dataset`` (``save_to_disk``) directories with the native columns, read with pyarrow; and
``triples`` (``subject``, ``relation``, ``object``) turned into questions by a relation template file.

Reading is two steps: a *container* reader (JSONL, JSON array, CSV, Parquet, Arrow directory) yields
raw rows with their location, and a *schema* converter turns each row into a Fact. Every bad row
raises InputError naming the file, the line (JSONL line, the line where a JSON array item starts,
the CSV line, or the table row) and the field; nothing is skipped silently.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from knowpack.errors import InputError
from knowpack.facts.model import Fact, FactSet
from knowpack.facts.templates import RelationTemplates, load_templates, templates_from_mapping

logger = logging.getLogger(__name__)

__all__ = ["FORMATS", "load_facts", "detect_format"]

FORMATS = ("native", "head_to_tail", "zsre", "counterfact", "popqa", "triples", "parquet", "hf_dataset")
NATIVE_FIELDS = ("id", "question", "answers", "subject", "relation", "object", "paraphrases", "popularity", "meta")
_JSON_WS = re.compile(r"[ \t\n\r]*")
TemplatesArg = RelationTemplates | Mapping[str, Any] | str | Path | None


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


# ------------------------------------------------------------------------------ containers

def _read_text(rd: _Reader) -> str:
    try:
        raw = rd.path.read_bytes()
    except FileNotFoundError:
        raise rd.error("file not found; check the path") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise rd.error(f"invalid UTF-8 (byte 0x{raw[exc.start]:02x} at column {col}); save the file as UTF-8",
                       line=line) from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise rd.error("the file is empty; it must hold at least one fact")
    return text


def _jsonl_rows(rd: _Reader, text: str) -> Iterator[_Row]:
    # split on "\n" only: str.splitlines would also split on U+2028 etc., legal inside JSON strings
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = _json_loads(line)
        except json.JSONDecodeError as exc:
            raise rd.error(f"invalid JSON at column {exc.colno}: {exc.msg}; each line must be one JSON object",
                           line=number) from None
        except (ValueError, RecursionError) as exc:
            raise rd.error(_json_limit(exc), line=number) from None
        if not isinstance(obj, dict):
            raise rd.error(f"expected a JSON object {{...}}, got {_kind(obj)}", line=number)
        yield _Row(obj, number)


def _array_item_lines(text: str) -> list[int]:
    """Line on which each item of a top-level JSON array starts (text is known to be valid JSON)."""
    decoder = json.JSONDecoder()
    pos = _JSON_WS.match(text, 0).end() + 1  # past "["
    line, counted, lines = 1, 0, []
    pos = _JSON_WS.match(text, pos).end()
    if text[pos] == "]":
        return lines
    while True:
        pos = _JSON_WS.match(text, pos).end()
        line += text.count("\n", counted, pos)
        counted = pos
        lines.append(line)
        _, pos = decoder.raw_decode(text, pos)
        pos = _JSON_WS.match(text, pos).end()
        if text[pos] != ",":
            return lines
        pos += 1


def _unreadable_item_line(text: str) -> int | None:
    """Line of the first top-level array item json cannot read (nested too deeply, a too long number)."""
    decoder = json.JSONDecoder(object_pairs_hook=_object)
    pos = _JSON_WS.match(text, 0).end()
    if not text.startswith("[", pos):
        return None
    pos += 1
    while True:
        pos = _JSON_WS.match(text, pos).end()
        try:
            _, pos = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError):
            return text.count("\n", 0, pos) + 1
        pos = _JSON_WS.match(text, pos).end()
        if pos >= len(text) or text[pos] != ",":
            return None
        pos += 1


def _json_rows(rd: _Reader, text: str) -> Iterator[_Row]:
    try:
        doc = _json_loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            yield from _jsonl_rows(rd, text)  # a .json file holding JSON Lines
            return
        raise rd.error(f"invalid JSON at column {exc.colno}: {exc.msg}", line=exc.lineno) from None
    except (ValueError, RecursionError) as exc:
        raise rd.error(_json_limit(exc), line=_unreadable_item_line(text)) from None
    lines: list[int | None]
    if isinstance(doc, list):
        items, lines = doc, list(_array_item_lines(text))
    elif isinstance(doc, dict) and isinstance(doc.get("data", doc.get("Data")), list):
        items = doc.get("data", doc.get("Data"))
        lines = [None] * len(items)
    else:
        raise rd.error(f"expected a JSON array of objects [{{...}}, ...], got {_kind(doc)}", line=1)
    if not items:
        raise rd.error("the JSON array is empty; it must hold at least one fact", line=1)
    for index, (obj, line) in enumerate(zip(items, lines)):
        row = _Row(obj, line, f"array index {index}")
        if not isinstance(obj, dict):
            raise rd.error(f"expected a JSON object {{...}}, got {_kind(obj)}", row)
        yield row


def _csv_rows(rd: _Reader, text: str) -> Iterator[_Row]:
    delimiter = "\t" if rd.path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except csv.Error as exc:
        raise rd.error(f"invalid CSV: {exc}", line=1) from None
    header = [h.strip() for h in header]
    if not any(header):
        raise rd.error("the CSV header is empty", line=1)
    dup = next((h for i, h in enumerate(header) if h in header[:i]), None)
    if dup:
        raise rd.error(f"column '{dup}' appears twice in the header", line=1, field=dup)
    start = reader.line_num + 1
    n_rows = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise rd.error(f"invalid CSV: {exc}", line=start) from None
        if cells and any(c.strip() for c in cells):
            if len(cells) != len(header):
                raise rd.error(f"the row has {len(cells)} fields but the header has {len(header)}; quote values "
                               "that contain the delimiter", line=start)
            n_rows += 1
            yield _Row({h: c for h, c in zip(header, cells) if c != ""}, start, encoded=True)
        start = reader.line_num + 1
    if not n_rows:
        raise rd.error("the CSV file has a header but no rows", line=1)


def _table_rows(rd: _Reader, table: Any) -> Iterator[_Row]:
    if table.num_rows == 0:
        raise rd.error("the table has no rows")
    for index, obj in enumerate(table.to_pylist()):
        yield _Row({k: v for k, v in obj.items() if v is not None}, index + 1, f"table row {index}",
                   encoded=True)


def _parquet_rows(rd: _Reader) -> Iterator[_Row]:
    import pyarrow.parquet as pq

    if not rd.path.exists():
        raise rd.error("file not found; check the path")
    try:
        table = pq.read_table(rd.path)
    except Exception as exc:  # pyarrow raises several types; report the reason, keep no traceback
        raise rd.error(f"not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    yield from _table_rows(rd, table)


def _hf_dataset_rows(rd: _Reader) -> Iterator[_Row]:
    """Rows of a ``Dataset.save_to_disk`` directory, read from its Arrow files with pyarrow."""
    import pyarrow as pa

    directory = rd.path
    splits_file = directory / "dataset_dict.json"
    if splits_file.exists():
        splits = json.loads(splits_file.read_text(encoding="utf-8")).get("splits", [])
        if len(splits) != 1:
            raise rd.error(f"this is a DatasetDict with splits {', '.join(splits)}; point to one of them, "
                           f"e.g. {directory / (splits[0] if splits else 'train')}")
        directory = directory / splits[0]
    state_file = directory / "state.json"
    if state_file.exists():
        state = json.loads(state_file.read_text(encoding="utf-8"))
        files = [directory / f["filename"] for f in state.get("_data_files", [])]
    else:
        files = sorted(directory.glob("*.arrow"))
    if not files:
        raise rd.error("no Arrow data files (state.json or *.arrow) found; expected a directory written by "
                       "datasets' save_to_disk")
    tables = []
    for file in files:
        try:
            with pa.memory_map(str(file)) as source:
                try:
                    tables.append(pa.ipc.open_stream(source).read_all())
                except pa.ArrowInvalid:
                    source.seek(0)
                    tables.append(pa.ipc.open_file(source).read_all())
        except (OSError, pa.ArrowInvalid) as exc:
            raise InputError(f"not a readable Arrow file ({exc})", path=str(file)) from None
    yield from _table_rows(rd, pa.concat_tables(tables) if len(tables) > 1 else tables[0])


def _container(path: Path, fmt: str) -> str:
    if fmt == "parquet" or path.suffix.lower() in (".parquet", ".pq"):
        return "parquet"
    if fmt == "hf_dataset" or path.is_dir():
        return "hf_dataset"
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    return "json"  # .json, and unknown suffixes: _read_rows sniffs the first character


def _read_rows(rd: _Reader, container: str) -> Iterator[_Row]:
    if container == "parquet":
        return _parquet_rows(rd)
    if container == "hf_dataset":
        return _hf_dataset_rows(rd)
    text = _read_text(rd)
    if container == "csv":
        return _csv_rows(rd, text)
    if container == "jsonl":
        return _jsonl_rows(rd, text)
    if rd.path.suffix.lower() != ".json" and not text.lstrip().startswith(("[", "{")):
        raise rd.error(f"unknown format: '{rd.path.suffix or '(no extension)'}' files are not read; use "
                       ".jsonl, .json, .csv, .tsv, .parquet or a save_to_disk directory, or pass format=")
    return _json_rows(rd, text)


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
    used = {"id", "question", "possible_answers", "answers", "subj", "prop", "obj", "s_pop"}
    return Fact(id=_id(rd, row, d, ("id",), "popqa", question, answers[0]), question=question, answers=answers,
                subject=_string(rd, row, d, "subj", required=False),
                relation=_string(rd, row, d, "prop", required=False),
                object=_string(rd, row, d, "obj", required=False),
                popularity=_integer(rd, row, d.get("s_pop"), "s_pop"),
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
                                  "counterfact": _counterfact, "popqa": _popqa, "triples": _triple}


def _schema_of(fields: Mapping[str, Any], container: str) -> str | None:
    keys = set(fields)
    if "requested_rewrite" in keys:
        return "counterfact"
    if "src" in keys:
        return "zsre"
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


# ---------------------------------------------------------------------------------- API

def _resolve_templates(templates: TemplatesArg) -> RelationTemplates | None:
    if templates is None or isinstance(templates, RelationTemplates):
        return templates
    if isinstance(templates, (str, Path)):
        return load_templates(templates)
    return templates_from_mapping(templates)


def _check_format(rd: _Reader, fmt: str) -> None:
    if fmt != "auto" and fmt not in FORMATS:
        close = difflib.get_close_matches(fmt, FORMATS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise rd.error(f"unknown format '{fmt}'{hint}; choose auto or one of {', '.join(FORMATS)}")


def _rows_and_schema(rd: _Reader, fmt: str) -> tuple[str, str, Iterator[_Row], _Row]:
    container = _container(rd.path, fmt)
    rows = _read_rows(rd, container)
    first = next(rows, None)
    if first is None:
        raise rd.error("the file holds no facts")
    if fmt in _SCHEMAS:
        schema = fmt
    else:
        detected = _schema_of(first.data, container)
        if detected is None:
            fields = ", ".join(sorted(first.data)) or "none"
            raise rd.error(f"cannot tell the format from the fields ({fields}); pass format= one of "
                           f"{', '.join(FORMATS)}", first)
        schema = detected
    return container, schema, rows, first


def load_facts(path: str | Path, format: str = "auto", *, templates: TemplatesArg = None) -> FactSet:
    """Read facts from `path` in `format` (or detect it); `templates` turns triples into questions.

    The returned FactSet has ``source`` (the path) and ``format`` (the format read) set. Every
    malformed row raises InputError naming the file, the line and the field.
    """
    rd = _Reader(Path(path))
    _check_format(rd, format)
    tpl = _resolve_templates(templates)
    container, schema, rows, first = _rows_and_schema(rd, format)
    convert = _SCHEMAS[schema]
    facts: list[Fact] = []
    seen: dict[str, _Row] = {}
    for row in _chain(first, rows):
        _check_values(rd, row, row.data)
        fact = convert(rd, row, tpl)
        if fact.id in seen:
            other = seen[fact.id]
            given = any(k in row.data for k in ("id", "case_id", "question_id"))
            if given:
                raise rd.error(f"duplicate id '{fact.id}' (also at {other.where()}{_note(other)}); ids must be "
                               "unique", row, "id")
            raise rd.error(f"repeats the fact at {other.where()}{_note(other)} (same content, derived id "
                           f"'{fact.id}'); remove one or give each row an 'id'", row, "id")
        seen[fact.id] = row
        facts.append(fact)
    fmt = container if container in ("parquet", "hf_dataset") and schema == "native" else schema
    factset = FactSet(facts, source=str(path))
    factset.format = fmt
    logger.info("loaded %d facts from %s (format %s)", len(facts), path, fmt)
    return factset


def detect_format(path: str | Path) -> str:
    """The format ``load_facts(path)`` would read (reads the first row only)."""
    rd = _Reader(Path(path))
    container, schema, _, _ = _rows_and_schema(rd, "auto")
    return container if container in ("parquet", "hf_dataset") and schema == "native" else schema


def _chain(first: _Row, rest: Iterator[_Row]) -> Iterator[_Row]:
    yield first
    yield from rest


def _note(row: _Row) -> str:
    return f" ({row.note})" if row.note and row.line is not None else ""
