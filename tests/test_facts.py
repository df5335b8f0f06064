"""Tests for the fact loaders, relation templates and fact summaries (knowpack.facts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from knowpack.errors import InputError, KnowpackError
from knowpack.facts import (FORMATS, Fact, FactSet, RelationTemplates, detect_format, format_summary, load_facts,
                            load_templates, summarize, templates_from_mapping)

DATA = Path(__file__).parent / "data" / "facts"
TEMPLATES = DATA / "relations.yaml"


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def jsonl(*rows: Any) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def fails(path: Path, *fragments: str, line: int | None = None, field: str | None = None, **kwargs: Any) -> str:
    """Load `path`, expect InputError naming the file (and line/field when given) and fragments."""
    with pytest.raises(InputError) as exc:
        load_facts(path, **kwargs)
    msg = str(exc.value)
    assert path.name in msg, msg
    if line is not None:
        assert f"line {line}" in msg and exc.value.line == line, msg
    if field is not None:
        assert f"field '{field}'" in msg and exc.value.field == field, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


GOOD = {"id": "a", "question": "Where was Ada born?", "answers": ["Marlow"]}


# ------------------------------------------------------------------------ formats, good files

@pytest.mark.parametrize("name, fmt, count", [
    ("native.jsonl", "native", 4),
    ("head_to_tail.json", "head_to_tail", 3),
    ("zsre.json", "zsre", 2),
    ("counterfact.json", "counterfact", 2),
    ("popqa.csv", "popqa", 3),
    ("entity_questions.json", "popqa", 2),
    ("triples.jsonl", "triples", 3),
    ("triples.csv", "triples", 2),
])
def test_sample_files_detected_and_loaded(name: str, fmt: str, count: int) -> None:
    facts = load_facts(DATA / name, templates=TEMPLATES)
    assert len(facts) == count and facts.format == fmt  # type: ignore[attr-defined]
    assert detect_format(DATA / name) == fmt
    explicit = load_facts(DATA / name, fmt, templates=TEMPLATES)
    assert explicit.fingerprint() == facts.fingerprint()
    for fact in facts:
        assert fact.question.strip() and fact.answers and all(a.strip() for a in fact.answers)


def test_native_fields() -> None:
    facts = load_facts(DATA / "native.jsonl")
    f1, f2, f3, f4 = facts
    assert f1.answers == ("Marlow", "Marlow, England") and f1.popularity == 12
    assert (f1.subject, f1.relation, f1.object) == ("Ada Quill", "birthplace", "Marlow")
    assert len(f1.paraphrases) == 2
    assert f2.meta == {"source": "hand-written", "tags": ["tail"]} and f2.popularity == 0
    assert f3.subject is None and f4.popularity is None  # null optional field = absent
    assert facts.source == str(DATA / "native.jsonl")


def test_native_round_trip(tmp_path: Path) -> None:
    facts = load_facts(DATA / "native.jsonl")
    path = write(tmp_path, "again.jsonl", jsonl(*[f.to_dict() for f in facts]))
    assert load_facts(path).fingerprint() == facts.fingerprint()


def test_head_to_tail() -> None:
    f1, f2, f3 = load_facts(DATA / "head_to_tail.json")
    assert f1.id == "tc_1" and f1.answers == ("Ada Quill", "A. Quill") and f1.meta == {"category": "tail"}
    assert f2.answers == ("Tessin",) and f2.id.startswith("h2t-")
    assert f3.answers == ("bren tally",)  # normalised aliases only when nothing else is given


def test_derived_ids_are_stable(tmp_path: Path) -> None:
    rows = json.loads((DATA / "head_to_tail.json").read_text())
    reordered = write(tmp_path, "h2t.json", json.dumps(rows[::-1]))
    ids = {f.question: f.id for f in load_facts(DATA / "head_to_tail.json")}
    assert ids == {f.question: f.id for f in load_facts(reordered)}


def test_zsre() -> None:
    f1, f2 = load_facts(DATA / "zsre.json")
    assert f1.question == "Where was Ada Quill born?" and f1.answers == ("Marlow",) and f1.subject == "Ada Quill"
    assert f1.paraphrases == ("What is the birthplace of Ada Quill?",)
    assert f1.meta["loc"].startswith("nq question") and f1.meta["loc_ans"] == "Ilse Brand"
    assert f1.meta["alt"] == "Dover"
    assert f2.answers == ("Orbix Ltd", "Orbix")


def test_counterfact() -> None:
    f1, f2 = load_facts(DATA / "counterfact.json")
    assert f1.id == "0" and f1.question == "The mother tongue of Ada Quill is"
    assert f1.answers == ("Tessish",) and f1.object == "Tessish" and f1.relation == "P103"
    assert f1.paraphrases == ("Ada Quill grew up speaking", "Ada Quill's first language is")
    assert f1.meta["target_new"]["str"] == "Velmoran" and f1.meta["neighborhood_prompts"]
    assert f2.question == "Orbix is headquartered in"


def test_popqa_csv() -> None:
    f1, f2, f3 = load_facts(DATA / "popqa.csv")
    assert f1.id == "4222362" and f1.answers == ("politician", "political leader")
    assert (f1.subject, f1.relation, f1.object, f1.popularity) == ("George Rankin", "occupation", "politician", 142)
    assert f2.question == "In what city was Ada Quill born?" and f2.answers[1] == "Marlow, England"
    assert f3.popularity is None  # empty s_pop cell


def test_entity_questions_json() -> None:
    f1, f2 = load_facts(DATA / "entity_questions.json")
    assert f2.answers == ("Dover", "Dover, Kent") and f1.id != f2.id


def test_triples_with_template_file() -> None:
    f1, f2, f3 = load_facts(DATA / "triples.jsonl", templates=TEMPLATES)
    assert f1.question == "Where was Ada Quill born?"
    assert f1.paraphrases == ("What is the birthplace of Ada Quill?", "In which town was Ada Quill born?")
    assert f1.answers == ("Marlow", "Marlow, England") and f1.popularity == 3
    assert f2.paraphrases == ("Which company does Bren Tally work for?",)
    assert f3.id == "t3" and f3.paraphrases == ()


def test_triples_with_template_mapping() -> None:
    mapping = {"birthplace": ["Where was {subject} born?"], "employer": "Who employs {subject}?",
               "capital": ["Name the capital of {subject}.", "{subject}'s capital is which city?"]}
    facts = load_facts(DATA / "triples.jsonl", templates=mapping)
    assert facts[2].question == "Name the capital of Velmora." and facts[2].paraphrases == (
        "Velmora's capital is which city?",)
    same = load_facts(DATA / "triples.jsonl", templates=templates_from_mapping(mapping))
    assert same.fingerprint() == facts.fingerprint()


def test_parquet(tmp_path: Path) -> None:
    rows = [dict(GOOD, relation=None, popularity=None, paraphrases=None), {"id": "b", "question": "Who employs Bren?", "answers": ["Orbix", "Orbix Ltd"],
                         "relation": "employer", "popularity": 4, "paraphrases": ["Bren works for?"]}]
    path = tmp_path / "facts.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    facts = load_facts(path)
    assert facts.format == "parquet" and facts.ids() == ["a", "b"]  # type: ignore[attr-defined]
    assert facts["a"].relation is None and facts["a"].popularity is None  # null cells = absent
    assert facts["b"].answers == ("Orbix", "Orbix Ltd") and facts["b"].paraphrases == ("Bren works for?",)


def test_parquet_meta_as_json_string(tmp_path: Path) -> None:
    path = tmp_path / "facts.parquet"
    pq.write_table(pa.Table.from_pylist([dict(GOOD, meta='{"source": "x", "n": [1, 2]}'),
                                         dict(GOOD, id="b", meta='{"other": true}')]), path)
    facts = load_facts(path)
    assert facts["a"].meta == {"source": "x", "n": [1, 2]} and facts["b"].meta == {"other": True}


def _save_to_disk(directory: Path, rows: list[dict[str, Any]], shards: int = 1) -> None:
    """Write the layout of datasets' Dataset.save_to_disk (Arrow stream shards + state.json)."""
    directory.mkdir(parents=True)
    files = []
    table = pa.Table.from_pylist(rows)
    step = -(-len(rows) // shards)
    for i in range(shards):
        name = f"data-{i:05d}-of-{shards:05d}.arrow"
        with pa.OSFile(str(directory / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table.slice(i * step, step))
        files.append({"filename": name})
    (directory / "state.json").write_text(json.dumps({"_data_files": files, "_split": "train"}))
    (directory / "dataset_info.json").write_text("{}")


def test_hf_dataset_directory(tmp_path: Path) -> None:
    rows = [dict(GOOD, id=f"q{i}", answers=[f"A{i}"]) for i in range(5)]
    _save_to_disk(tmp_path / "ds", rows, shards=2)
    facts = load_facts(tmp_path / "ds")
    assert facts.format == "hf_dataset" and facts.ids() == [f"q{i}" for i in range(5)]  # type: ignore[attr-defined]


def test_hf_dataset_dict_with_one_split(tmp_path: Path) -> None:
    _save_to_disk(tmp_path / "dd" / "train", [GOOD])
    (tmp_path / "dd" / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    assert load_facts(tmp_path / "dd").ids() == ["a"]


def test_hf_dataset_dict_with_several_splits(tmp_path: Path) -> None:
    for split in ("train", "test"):
        _save_to_disk(tmp_path / "dd" / split, [GOOD])
    (tmp_path / "dd" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    msg = fails(tmp_path / "dd", "train, test", "point to one of them")
    assert load_facts(tmp_path / "dd" / "test").ids() == ["a"] and msg


def test_json_file_holding_json_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "export.json", jsonl(GOOD, dict(GOOD, id="b")))
    assert load_facts(path).ids() == ["a", "b"]


def test_crlf_bom_and_unicode_line_separators(tmp_path: Path) -> None:
    row = dict(GOOD, question="Where was Ada\u2028born?")
    text = "\ufeff" + json.dumps(row, ensure_ascii=False) + "\r\n" + json.dumps(dict(GOOD, id="b")) + "\r\n"
    facts = load_facts(write(tmp_path, "f.jsonl", text))
    assert facts.ids() == ["a", "b"] and "\u2028" in facts[0].question


def test_formats_list() -> None:
    assert set(FORMATS) == {"native", "head_to_tail", "zsre", "counterfact", "easyedit", "popqa", "triples",
                            "parquet", "hf_dataset"}


# ------------------------------------------------------------------------ bad input, one each

def test_missing_field(tmp_path: Path) -> None:
    path = write(tmp_path, "f.jsonl", jsonl(GOOD, {"id": "b", "answers": ["x"]}))
    fails(path, "missing", line=2, field="question")


def test_null_required_field(tmp_path: Path) -> None:
    path = write(tmp_path, "f.jsonl", jsonl({"id": "b", "question": None, "answers": ["x"]}))
    fails(path, "null", line=1, field="question")


def test_missing_answers(tmp_path: Path) -> None:
    fails(write(tmp_path, "f.jsonl", jsonl(GOOD, {"id": "b", "question": "q?"})), "missing", line=2,
          field="answers")


def test_wrong_type_answers_string(tmp_path: Path) -> None:
    path = write(tmp_path, "f.jsonl", jsonl(GOOD, dict(GOOD, id="b", answers="Marlow")))
    fails(path, "expected a list of strings", '["Marlow"]', line=2, field="answers")


def test_wrong_type_answer_item(tmp_path: Path) -> None:
    path = write(tmp_path, "f.jsonl", jsonl(dict(GOOD, answers=["Marlow", 7])))
    fails(path, "expected a string", line=1, field="answers[1]")


def test_wrong_type_id(tmp_path: Path) -> None:
    fails(write(tmp_path, "f.jsonl", jsonl(dict(GOOD, id=17))), 'write "17"', line=1, field="id")


def test_wrong_type_popularity(tmp_path: Path) -> None:
    fails(write(tmp_path, "f.jsonl", jsonl(dict(GOOD, popularity="many"))), "integer", line=1, field="popularity")


def test_wrong_type_meta(tmp_path: Path) -> None:
    fails(write(tmp_path, "f.jsonl", jsonl(dict(GOOD, meta=[1]))), "object", line=1, field="meta")


def test_wrong_type_paraphrases(tmp_path: Path) -> None:
    fails(write(tmp_path, "f.jsonl", jsonl(dict(GOOD, paraphrases="Ada born where?"))), line=1,
          field="paraphrases")


def test_unknown_native_field_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, "f.jsonl", jsonl(GOOD, {"id": "b", "question": "q?", "answers": ["x"], "popularty": 1}))
    fails(path, "did you mean 'popularity'", "meta", line=2, field="popularty")


def test_empty_answer_string(tmp_path: Path) -> None:
    path = write(tmp_path, "f.jsonl", jsonl(GOOD, dict(GOOD, id="c", answers=["Marlow", ""])))
    fails(path, "empty string", line=2, field="answers[1]")
    path = write(tmp_path, "g.jsonl", jsonl(dict(GOOD, answers=["  "])))
    fails(path, "empty string", line=1, field="answers[0]")


def test_empty_question_string(tmp_path: Path) -> None:
    fails(write(tmp_path, "f.jsonl", jsonl(dict(GOOD, question="  "))), "empty", line=1, field="question")


def test_empty_answers_list(tmp_path: Path) -> None:
    fails(write(tmp_path, "f.jsonl", jsonl(dict(GOOD, answers=[]))), "list is empty", line=1, field="answers")


def test_duplicate_id_names_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "f.jsonl", jsonl(GOOD, dict(GOOD, id="b"), "", dict(GOOD, question="Other?")))
    fails(path, "duplicate id 'a'", "also at line 1", line=4, field="id")


def test_duplicate_derived_id_names_both_items(tmp_path: Path) -> None:
    row = {"src": "Where was Ada born?", "answers": ["Marlow"], "rephrase": "Ada's birthplace?"}
    path = write(tmp_path, "z.json", "[\n" + json.dumps(row) + ",\n" + json.dumps(row) + "\n]\n")
    fails(path, "repeats the fact at line 2 (array index 0)", "array index 1", line=3, field="id", format="zsre")


def test_invalid_json_line(tmp_path: Path) -> None:
    path = write(tmp_path, "f.jsonl", jsonl(GOOD, '{"id": "b", "question": "q?" "answers": ["x"]}'))
    fails(path, "invalid JSON at column 30", "Expecting ','", line=2)


def test_invalid_json_array(tmp_path: Path) -> None:
    path = write(tmp_path, "f.json", '[\n  {"question": "q?", "answers": ["x"]},\n  {"question": "r?",,}\n]\n')
    fails(path, "invalid JSON at column", line=3)


def test_non_object_line(tmp_path: Path) -> None:
    fails(write(tmp_path, "f.jsonl", jsonl(GOOD, '["a", "b"]')), "expected a JSON object", line=2)


def test_json_array_item_reports_its_line_and_index(tmp_path: Path) -> None:
    text = '[\n  {"src": "Where?", "answers": ["Marlow"]},\n  {\n    "src": "Who?",\n    "answers": []\n  }\n]'
    fails(write(tmp_path, "z.json", text), "array index 1", line=3, field="answers")


def test_invalid_utf8(tmp_path: Path) -> None:
    raw = jsonl(GOOD).encode() + b'{"id": "b", "question": "Caf\xe9?", "answers": ["x"]}\n'
    fails(write(tmp_path, "f.jsonl", raw), "invalid UTF-8", "0xe9", line=2)


def test_empty_file(tmp_path: Path) -> None:
    fails(write(tmp_path, "f.jsonl", ""), "empty")
    fails(write(tmp_path, "g.jsonl", "\n  \n"), "empty")


def test_empty_json_array(tmp_path: Path) -> None:
    fails(write(tmp_path, "f.json", "[]"), "empty", line=1)


def test_csv_without_rows(tmp_path: Path) -> None:
    fails(write(tmp_path, "f.csv", "question,possible_answers\n"), "no rows", line=1)


def test_csv_bad_json_list_cell(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", 'question,possible_answers\nq?,"[""a""]"\nr?,"[""b"","\n')
    fails(path, "not a valid JSON list", line=3, field="possible_answers")


def test_csv_wrong_number_of_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", 'question,possible_answers\nq?,"[""a""]"\nr?,"[""b""]",extra\n')
    fails(path, "3 fields but the header has 2", line=3)


def test_csv_multiline_cell_keeps_line_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", 'question,possible_answers\n"two\nlines?","[""a""]"\nr?,\n')
    fails(path, "missing", line=4, field="possible_answers")


def test_unknown_format_name(tmp_path: Path) -> None:
    fails(write(tmp_path, "f.jsonl", jsonl(GOOD)), "unknown format 'zsr'", "did you mean 'zsre'", format="zsr")


def test_unknown_extension(tmp_path: Path) -> None:
    fails(write(tmp_path, "facts.txt", "Paris is the capital of France\n"), "unknown format", ".jsonl")


def test_undetectable_fields(tmp_path: Path) -> None:
    fails(write(tmp_path, "f.jsonl", jsonl({"prompt": "x", "target": "y"})), "cannot tell the format",
          "prompt, target", line=1)


def test_file_not_found(tmp_path: Path) -> None:
    fails(tmp_path / "missing.jsonl", "not found")


def test_not_a_parquet_file(tmp_path: Path) -> None:
    fails(write(tmp_path, "f.parquet", "not parquet"), "not a readable Parquet file")


def test_parquet_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "f.parquet"
    pq.write_table(pa.Table.from_pylist([GOOD, dict(GOOD, id="b", answers=[])]), path)
    fails(path, "table row 1", line=2, field="answers")


def test_hf_dataset_without_arrow_files(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    fails(tmp_path / "ds", "save_to_disk")


def test_head_to_tail_bad_answer(tmp_path: Path) -> None:
    path = write(tmp_path, "h.json", json.dumps([{"question": "q?", "answer": {"aliases": "Paris"}}]))
    fails(path, "list of strings", line=1, field="answer.aliases")
    path = write(tmp_path, "i.json", json.dumps([{"question": "q?", "answer": {"type": "x"}}]))
    fails(path, "no answer", line=1, field="answer.aliases")


def test_counterfact_prompt_without_placeholder(tmp_path: Path) -> None:
    row = {"case_id": 3, "requested_rewrite": {"prompt": "The capital of France is", "subject": "France",
                                               "target_true": {"str": "Paris"}}}
    fails(write(tmp_path, "c.json", json.dumps([row])), "has no {}", line=1, field="requested_rewrite.prompt")


def test_counterfact_missing_nested_field(tmp_path: Path) -> None:
    row = {"case_id": 3, "requested_rewrite": {"prompt": "{} is in", "subject": "Paris", "target_true": {"id": 1}}}
    fails(write(tmp_path, "c.json", json.dumps([row])), "missing", line=1, field="requested_rewrite.target_true.str")


def test_template_without_subject(tmp_path: Path) -> None:
    tpl = write(tmp_path, "rel.yaml", 'birthplace:\n  - "Where was {subject} born?"\n  - "Where was it born?"\n')
    with pytest.raises(InputError) as exc:
        load_facts(DATA / "triples.jsonl", templates=tpl)
    msg = str(exc.value)
    assert "rel.yaml" in msg and "line 3" in msg and "field 'birthplace'" in msg and "{subject}" in msg


def test_template_with_unknown_placeholder(tmp_path: Path) -> None:
    tpl = write(tmp_path, "rel.yaml", 'capital: ["What is the capital of {subject} in {year}?"]\n')
    with pytest.raises(InputError, match=r"rel\.yaml, line 1, field 'capital'.*\{year\}"):
        load_templates(tpl)


def test_relation_with_no_template(tmp_path: Path) -> None:
    tpl = write(tmp_path, "rel.yaml", 'birthplace: ["Where was {subject} born?"]\n'
                                      'employer: ["Who employs {subject}?"]\n')
    msg = fails(DATA / "triples.jsonl", "no template for relation 'capital'", "rel.yaml", line=3,
                field="relation", templates=tpl)
    assert "birthplace, employer" in msg


def test_triples_without_templates() -> None:
    fails(DATA / "triples.csv", "relation template file", line=2)


def test_template_file_problems(tmp_path: Path) -> None:
    cases = {
        "syntax": ('capital: ["What is {subject}?"\nbirthplace: x\n', "YAML syntax error", None),
        "empty_list": ('capital: []\n', "no templates", "capital"),
        "twice": ('capital: "A {subject}?"\nbirthplace: "B {subject}?"\ncapital: "C {subject}?"\n',
                  "defined twice (first at line 1)", "capital"),
        "number": ('capital: [12]\n', "must be a string", "capital"),
        "not_mapping": ('- "What is {subject}?"\n', "map each relation", None),
        "empty": ("", "empty", None),
    }
    for name, (text, fragment, field) in cases.items():
        path = write(tmp_path, f"{name}.yaml", text)
        with pytest.raises(InputError) as exc:
            load_templates(path)
        msg = str(exc.value)
        assert path.name in msg and fragment in msg, (name, msg)
        if field:
            assert f"field '{field}'" in msg, (name, msg)
    assert "line 3" in str(pytest.raises(InputError, load_templates, tmp_path / "twice.yaml").value)


def test_errors_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(KnowpackError) as exc:
        load_facts(write(tmp_path, "f.jsonl", ""))
    assert exc.value.exit_code == 2 and isinstance(exc.value, ValueError)


# ------------------------------------------------------------------------ templates, summary

def test_relation_templates_api() -> None:
    tpl = load_templates(TEMPLATES)
    assert isinstance(tpl, RelationTemplates) and tpl.relations() == ["birthplace", "employer", "capital"]
    assert "capital" in tpl and "nope" not in tpl and len(tpl) == 3
    assert tpl.question("capital", "Velmora") == "What is the capital of Velmora?"
    assert tpl.paraphrases("employer", "Bo") == ("Which company does Bo work for?",)
    assert tpl.lines["employer"] == 6
    assert templates_from_mapping(tpl.to_dict()).templates == tpl.templates


def test_summary() -> None:
    facts = load_facts(DATA / "native.jsonl")
    s = summarize(facts)
    assert s["count"] == 4 and s["format"] == "native" and s["source"].endswith("native.jsonl")
    assert s["relations"] == {"birthplace": 1, "employer": 1, "founding_year": 1} and s["without_relation"] == 1
    assert s["with_paraphrases"] == 0.5 and s["popularity_present"] == 0.5
    assert s["answers_per_fact"]["max"] == 2 and s["fingerprint"] == facts.fingerprint()
    json.dumps(s)  # printable as JSON
    text = format_summary(s)
    assert "count" in text and "birthplace" in text


def test_summary_of_plain_factset() -> None:
    facts = FactSet([Fact("x", "Is Marlow in Marlow?", ("Marlow",)), Fact("y", "Is Marlow in Marlow?", ("No",))])
    s = summarize(facts, format="native")
    assert s["duplicate_questions"] == 1 and s["answer_in_question"] == 1 and s["popularity"] == {}
    assert "popularity" in format_summary(s)


# ------------------------------------------------------------------------ property test

_word = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(
    lambda s: s.strip() != "")
_fact = st.builds(
    lambda i, q, ans, para, pop, rel: Fact(id=f"id{i}", question=q, answers=tuple(ans), paraphrases=tuple(para),
                                           popularity=pop, relation=rel),
    st.integers(0, 10**6), _word, st.lists(_word, min_size=1, max_size=3), st.lists(_word, max_size=2),
    st.one_of(st.none(), st.integers(0, 10**9)), st.one_of(st.none(), _word))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(facts=st.lists(_fact, min_size=1, max_size=5, unique_by=lambda f: f.id))
def test_native_write_then_load_property(tmp_path: Path, facts: list[Fact]) -> None:
    path = write(tmp_path, "p.jsonl", "".join(json.dumps(f.to_dict(), ensure_ascii=False) + "\n" for f in facts))
    loaded = load_facts(path)
    assert [f.to_dict() for f in loaded] == [f.to_dict() for f in facts]
