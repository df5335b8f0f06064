"""Fact loaders: read common fact formats into a FactSet, with errors that name file, line and field.

    facts = load_facts("facts.jsonl")                           # format detected: native
    facts = load_facts("zsre_eval.json", "zsre")
    facts = load_facts("triples.csv", templates="relations.yaml")
    facts = load_facts("knowedit.json", easyedit_answer="ground_truth")

Formats (SPEC §1): ``native`` JSONL; ``head_to_tail`` (``question``, ``answer.aliases``,
``answer.normalized_aliases``); ``zsre`` (MEND's eval JSON: ``src``, ``answers``, ``rephrase``,
``loc``, ``loc_ans``) and ``counterfact`` (ROME's layout: ``requested_rewrite`` with a ``{}`` prompt
and ``target_true``, which is the answer; ``target_new`` stays in meta); ``easyedit`` (EasyEdit and
KnowEdit flat records, below); ``popqa`` / EntityQuestions CSV, TSV or JSON (``question``,
``possible_answers`` or ``answers``; PopQA's ``subj``, ``prop``, ``obj``, ``s_pop`` become subject,
relation, object and popularity; an EntityQuestions file such as ``P19.test.json`` carries its
relation only in its name, which becomes the relation ``P19``); ``parquet`` files and ``hf_dataset``
(``save_to_disk``) directories with the native columns, read with pyarrow; and ``triples``
(``subject``, ``relation``, ``object``) turned into questions by a relation template file.

EasyEdit / KnowEdit records hold ``prompt`` (the question; a ``{}`` in it is replaced by
``subject``), ``target_new`` (the edit), ``ground_truth`` (the true answer: a string, a list of
aliases, or KnowEdit's list of alias lists, flattened in order), ``subject``, ``rephrase_prompt``
(or ``rephrase``: paraphrases), and ``locality_prompt`` / ``locality_ground_truth``, ``locality`` and
``portability`` (nested dicts of lists of records), which stay in meta with every other field. Which
answer is trained on is a choice, ``easyedit_answer``: ``target_new`` (default, since these are edit
data sets: the model is taught the new answer) or ``ground_truth`` (recall of the true answer). The
answer not chosen is kept in meta under its own name and never accepted as an alias. In a run
config the option is ``facts_easyedit_answer``; on the command line ``--easyedit-answer``.

A file that is a multiple-choice benchmark (MMLU in any of its layouts, TruthfulQA, rows with
``choices``) is refused, naming the option that takes it (``eval.mc``), rather than misread as facts;
so is a file whose fields fit no format, with what each format needs.

Reading is two steps: a *container* reader here (JSONL, JSON array, CSV or TSV, Parquet, Arrow
directory) yields raw rows with their location, and a *schema* converter (facts/schemas.py) turns
each row into a Fact. Every bad row raises InputError naming the file, the line (JSONL line, the
line where a JSON array item starts, the CSV line, or the table row) and the field; nothing is
skipped silently.
"""

from __future__ import annotations

import csv
import difflib
import functools
import io
import json
import logging
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

from knowpack.errors import InputError
from knowpack.facts.model import Fact, FactSet
from knowpack.facts.schemas import (_BENCHMARK_HINT, _NEEDS, _SCHEMAS, EASYEDIT_ANSWERS, _check_values, _easyedit,
                                    _headerless_mmlu, _json_limit, _json_loads, _kind, _object, _Reader,
                                    _refuse_benchmark, _Row, _schema_of)
from knowpack.facts.templates import RelationTemplates, load_templates, templates_from_mapping

logger = logging.getLogger(__name__)

__all__ = ["FORMATS", "EASYEDIT_ANSWERS", "load_facts", "detect_format"]

FORMATS = ("native", "head_to_tail", "zsre", "counterfact", "easyedit", "popqa", "triples", "parquet",
           "hf_dataset")
_JSON_WS = re.compile(r"[ \t\n\r]*")
TemplatesArg = RelationTemplates | Mapping[str, Any] | str | Path | None


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
    first_line = text.split("\n", 1)[0]
    # PopQA's TSV is sometimes saved as .csv: tabs and no commas in the header mean tab-separated
    tabs = rd.path.suffix.lower() == ".tsv" or ("\t" in first_line and "," not in first_line)
    delimiter = "\t" if tabs else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except csv.Error as exc:
        raise rd.error(f"invalid CSV: {exc}", line=1) from None
    header = [h.strip() for h in header]
    if not any(header):
        raise rd.error("the CSV header is empty", line=1)
    if _headerless_mmlu(header):
        raise rd.error(_BENCHMARK_HINT.format(what="MMLU in its original CSV layout (no header; question, four "
                                                   "choices, answer letter)", where=f"pass it as eval.mc=[{rd.name}]"),
                       line=1)
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
    if not files and any(re.search(r"_(test|val|dev)\.csv$", p.name) for p in directory.glob("*.csv")):
        raise rd.error(_BENCHMARK_HINT.format(what="MMLU's original archive (one CSV per subject)",
                                              where=f"pass it as eval.mc=[{rd.name}]"))
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
    _refuse_benchmark(rd, first)  # even under an explicit format, which would misread it
    if fmt in _SCHEMAS:
        schema = fmt
    else:
        detected = _schema_of(first.data, container)
        if detected is None:
            fields = ", ".join(sorted(first.data)) or "none"
            raise rd.error(f"cannot tell the format from the fields ({fields}); pass format= one of "
                           f"{', '.join(FORMATS)} (each needs — {_NEEDS})", first)
        schema = detected
    return container, schema, rows, first


def load_facts(path: str | Path, format: str = "auto", *, templates: TemplatesArg = None,
               easyedit_answer: str = "target_new") -> FactSet:
    """Read facts from `path` in `format` (or detect it); `templates` turns triples into questions.

    `easyedit_answer` picks the answer trained on in EasyEdit/KnowEdit records: ``target_new``
    (the edit, default) or ``ground_truth`` (the true answer); other formats ignore it.
    The returned FactSet has ``source`` (the path) and ``format`` (the format read) set. Every
    malformed row raises InputError naming the file, the line and the field.
    """
    rd = _Reader(Path(path))
    _check_format(rd, format)
    if easyedit_answer not in EASYEDIT_ANSWERS:
        raise rd.error(f"unknown easyedit_answer '{easyedit_answer}'; choose one of {', '.join(EASYEDIT_ANSWERS)}")
    tpl = _resolve_templates(templates)
    container, schema, rows, first = _rows_and_schema(rd, format)
    convert = _SCHEMAS[schema]
    if schema == "easyedit":
        convert = functools.partial(_easyedit, answer=easyedit_answer)
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
    logger.debug("loaded %d facts from %s (format %s)", len(facts), path, fmt)
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
