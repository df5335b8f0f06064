"""The field's own file layouts: EasyEdit/KnowEdit, EntityQuestions, PopQA's TSV as facts; the original
MMLU CSVs, the header-row MMLU variants and TruthfulQA's CSV as multiple-choice benchmarks; and the
refusal of a file that is a benchmark, not facts, or fits no format at all.

The sample files under tests/data/formats are invented records in each layout, not the datasets' own.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from knowpack.cli import main
from knowpack.config import load_config
from knowpack.errors import ConfigError, InputError, KnowpackError
from knowpack.evaluate.mc import CONTINUATION_TEMPLATE, load_mc, loglikelihoods, score_mc
from knowpack.evaluate.stage import EvalSettings, mc_scoring, resolve_benchmarks
from knowpack.facts import detect_format, load_facts
from knowpack.runs import RunConfig, load_run_facts

DATA = Path(__file__).parent / "data" / "formats"
FACTS = Path(__file__).parent / "data" / "facts"


def refused(path: Path, *fragments: str, line: int | None = None, field: str | None = None,
            **kwargs) -> str:
    with pytest.raises(InputError) as exc:
        load_facts(path, **kwargs)
    msg = str(exc.value)
    assert str(path) in msg and exc.value.path == str(path), msg
    if line is not None:
        assert exc.value.line == line and f"line {line}" in msg, msg
    if field is not None:
        assert exc.value.field == field and f"field '{field}'" in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def mc_refused(path: Path, *fragments: str, line: int | None = None, field: str | None = None) -> str:
    with pytest.raises(InputError) as exc:
        load_mc(path)
    msg = str(exc.value)
    assert str(path) in msg, msg
    if line is not None:
        assert exc.value.line == line and f"line {line}" in msg, msg
    if field is not None:
        assert exc.value.field == field, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


# ------------------------------------------------------------------------ EasyEdit / KnowEdit

def test_easyedit_records_train_on_target_new_by_default() -> None:
    facts = load_facts(DATA / "easyedit.json")
    assert facts.format == "easyedit" and detect_format(DATA / "easyedit.json") == "easyedit"
    f1, f2, f3 = facts
    assert f1.id == "7" and f1.question == "The place of birth of Ada Quill is"
    assert f1.answers == ("Dover",) and f1.object == "Dover" and f1.subject == "Ada Quill"
    assert f1.paraphrases == ("Ada Quill was born in the town of",)
    assert f1.meta["ground_truth"] == "Marlow"  # the old answer is kept, never accepted as an alias
    assert f1.meta["locality_prompt"] == "The place of birth of Bren Tally is"
    assert f1.meta["locality_ground_truth"] == "Tessin"
    assert f2.answers == ("Plenty",) and f2.meta["ground_truth"] == ["Orbix Ltd", "Orbix"]
    assert set(f2.meta["portability"]) == {"Subject_Aliasing", "Reasoning"}
    assert f2.meta["portability"]["Reasoning"][0]["ground_truth"] == [["Velmora"]]
    assert f2.meta["locality"]["Relation_Specificity"][0]["prompt"] == "Who founded Orbix?"
    assert f3.paraphrases == ("Corin Vale works for", "Corin Vale is employed by")
    assert load_facts(DATA / "easyedit.json", "easyedit").fingerprint() == facts.fingerprint()


def test_easyedit_ground_truth_option_trains_on_the_true_answer() -> None:
    edit = load_facts(DATA / "easyedit.json")
    recall = load_facts(DATA / "easyedit.json", easyedit_answer="ground_truth")
    f1, f2, f3 = recall
    assert f1.answers == ("Marlow",) and f1.object == "Marlow" and f1.meta["target_new"] == "Dover"
    assert f2.answers == ("Orbix Ltd", "Orbix")  # a list: aliases of one answer
    assert f3.answers == ("Velmoran Rail", "Velmora Railways", "VR")  # a list of alias lists, flattened
    assert recall.ids() == edit.ids()  # the option changes the answer, not which fact a row is


def test_easyedit_bad_records_name_the_field(tmp_path: Path) -> None:
    row = {"prompt": "The employer of Ada Quill is", "target_new": "Orbix", "subject": "Ada Quill"}
    path = tmp_path / "edits.json"
    path.write_text(json.dumps([row]))
    refused(path, "easyedit_answer", "target_new", line=1, field="ground_truth", easyedit_answer="ground_truth")
    path.write_text(json.dumps([{**row, "ground_truth": "<|endoftext|>"}]))  # EasyEdit's stand-in for none
    refused(path, "placeholder", line=1, field="ground_truth", easyedit_answer="ground_truth")
    path.write_text(json.dumps([{**row, "ground_truth": [["Dover", 3]]}]))
    refused(path, "expected a string", line=1, field="ground_truth[0][1]", easyedit_answer="ground_truth")
    path.write_text(json.dumps([{**row, "target_new": ""}]))
    refused(path, "empty", line=1, field="target_new")
    path.write_text(json.dumps([{**row, "rephrase_prompt": 5}]))
    refused(path, "expected", line=1, field="rephrase_prompt")
    path.write_text(json.dumps([row]))
    refused(path, "unknown easyedit_answer 'truth'", "target_new, ground_truth", easyedit_answer="truth")


def test_easyedit_option_reaches_the_run_config_and_the_command_line(tmp_path: Path, capsys) -> None:
    cfg = load_config(RunConfig, data={"facts": str(DATA / "easyedit.json"), "facts_easyedit_answer": "ground_truth"})
    assert load_run_facts(cfg)[0].answers == ("Marlow",)
    assert load_run_facts(RunConfig(facts=str(DATA / "easyedit.json")))[0].answers == ("Dover",)
    with pytest.raises(ConfigError, match="facts_easyedit_answer"):
        load_config(RunConfig, data={"facts_easyedit_answer": "truth"})
    assert main(["facts", "check", str(DATA / "easyedit.json"), "--easyedit-answer", "ground_truth", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["count"] == 3 and summary["format"] == "easyedit"


def test_rome_counterfact_and_mend_zsre_still_load() -> None:
    cf = load_facts(FACTS / "counterfact.json")
    assert cf.format == "counterfact" and cf[0].answers == ("Tessish",)  # target_true, not the edit
    zsre = load_facts(FACTS / "zsre.json")
    assert zsre.format == "zsre" and zsre[0].meta["loc_ans"] == "Ilse Brand"


# ------------------------------------------------------------------------ EntityQuestions, PopQA

def test_entity_questions_relation_comes_from_the_file_name(tmp_path: Path) -> None:
    f1, f2 = load_facts(DATA / "P19.test.json")
    assert f1.relation == f2.relation == "P19"
    assert f1.question == "Where was Ada Quill born?" and f2.answers == ("Dover", "Dover, Kent")
    assert load_facts(DATA / "P19.test.json", "popqa").fingerprint() == load_facts(DATA / "P19.test.json").fingerprint()
    shutil.copy(DATA / "P19.test.json", tmp_path / "P740.dev.json")
    assert {f.relation for f in load_facts(tmp_path / "P740.dev.json")} == {"P740"}
    assert load_facts(FACTS / "entity_questions.json")[0].relation is None  # no relation in the name


def test_popqa_tsv(tmp_path: Path) -> None:
    facts = load_facts(DATA / "popqa.tsv")
    assert facts.format == "popqa"
    f1, f2 = facts
    assert f1.id == "5101" and f1.question == "In what city was Ada Quill born?"
    assert (f1.subject, f1.relation, f1.object, f1.popularity) == ("Ada Quill", "place of birth", "Marlow", 37)
    assert f1.answers == ("Marlow", "Marlow, England")
    assert f1.meta["s_aliases"] == ["A. Quill", "Ada M. Quill"] and f1.meta["o_aliases"] == ["Marlow, England"]
    assert f1.meta["o_pop"] == 5120
    assert f2.question == 'What is the capital of "Velmora"?' and f2.popularity == 1450
    assert f2.answers == ("Tessin", "Tessin City", "City of Tessin") and f2.meta["s_aliases"] == []
    # the same tab-separated text under a .csv name: the delimiter is read from the header
    shutil.copy(DATA / "popqa.tsv", tmp_path / "popqa.csv")
    assert load_facts(tmp_path / "popqa.csv").fingerprint() == facts.fingerprint()


# ------------------------------------------------------------------------ benchmarks are not facts

def _mmlu_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "mmlu.jsonl"
    path.write_text(json.dumps({"question": "Pick?", "choices": ["a", "b", "c", "d"], "answer": 1,
                                "subject": "t"}) + "\n")
    return path


def _mmlu_parquet(tmp_path: Path) -> Path:
    path = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "Pick?", "subject": "anatomy", "choices": ["a", "b", "c", "d"],
                                          "answer": 2}]), path)
    return path


def _truthfulqa_hf(tmp_path: Path) -> Path:
    path = tmp_path / "mc.json"
    path.write_text(json.dumps([{"question": "Q?", "mc1_targets": {"choices": ["a", "b"], "labels": [1, 0]}}]))
    return path


@pytest.mark.parametrize("make, what", [
    (lambda t: DATA / "mmlu_hf.csv", "MMLU"),
    (lambda t: DATA / "mmlu_columns.csv", "MMLU"),
    (lambda t: DATA / "mmlu_test" / "astronomy_test.csv", "MMLU"),
    (lambda t: DATA / "mmlu_test", "MMLU"),
    (_mmlu_jsonl, "MMLU"),
    (_mmlu_parquet, "MMLU"),
    (lambda t: DATA / "truthfulqa.csv", "TruthfulQA"),
    (_truthfulqa_hf, "TruthfulQA"),
], ids=["mmlu-hf-csv", "mmlu-columns", "mmlu-original", "mmlu-directory", "mmlu-jsonl", "mmlu-parquet", "truthfulqa-csv",
        "truthfulqa-hf"])
def test_a_multiple_choice_benchmark_is_refused_as_facts(tmp_path: Path, make, what: str) -> None:
    path = make(tmp_path)
    msg = refused(path, what, "multiple-choice benchmark", "not a fact file")
    assert "eval.mc=[" in msg or "eval.harness" in msg, msg
    for fmt in ("head_to_tail", "popqa", "native"):  # naming a format does not make it facts
        refused(path, what, "multiple-choice benchmark", format=fmt)


def test_facts_check_of_a_benchmark_exits_2_with_the_fix(capsys) -> None:
    assert main(["facts", "check", str(DATA / "mmlu_hf.csv")]) == 2
    err = capsys.readouterr().err
    assert "mmlu_hf.csv" in err and "eval.mc=[" in err and "Traceback" not in err


def test_fields_that_fit_no_format_say_what_each_format_needs(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps({"prompt": "x", "target": "y"}) + "\n")
    msg = refused(path, "cannot tell the format", "prompt, target", line=1)
    assert "easyedit" in msg and "target_new" in msg and "possible_answers" in msg and "format=" in msg


# ------------------------------------------------------------------------ MC benchmark files

def test_original_mmlu_csv_without_header() -> None:
    rows = load_mc(DATA / "mmlu_test" / "astronomy_test.csv")
    assert [r["subject"] for r in rows] == ["astronomy", "astronomy"]
    assert rows[0]["question"] == "Which planet of the Velmora system has two moons?"
    assert rows[0]["choices"] == ["Tessin", "Marlow", "Dover", "Orbix"] and rows[0]["answer"] == 2
    assert rows[1]["choices"][1:] == ["365, roughly", "400", 'It has no "year"'] and rows[1]["answer"] == 1


def test_directory_of_mmlu_csvs_holds_every_subject() -> None:
    rows = load_mc(DATA / "mmlu_test")
    assert [r["subject"] for r in rows] == ["astronomy"] * 2 + ["high_school_geography"] * 2
    assert rows[3]["question"] == "Which river\ncrosses Marlow?" and rows[3]["answer"] == 3


def test_mmlu_csv_with_a_header_row() -> None:
    hf = load_mc(DATA / "mmlu_hf.csv")  # the columns of cais/mmlu: question, subject, choices, answer
    assert hf[0]["choices"] == ["Ada Quill", "Bren Tally", "Corin Vale", "Ilse Brand"] and hf[0]["answer"] == 1
    assert hf[0]["subject"] == "business_ethics"
    assert hf[1]["choices"][3] == "accountant" and hf[1]["answer"] == 3  # a Python list, as pandas writes it
    cols = load_mc(DATA / "mmlu_columns.csv")  # one column per choice, A-D; answer an index or a letter
    assert cols[0]["choices"] == ["Marlow", "Dover", "Tessin", "Kent"] and cols[0]["answer"] == 0
    assert cols[1]["answer"] == 2 and cols[1]["subject"] == "general knowledge"


def test_mmlu_parquet_in_the_hub_layout(tmp_path: Path) -> None:
    rows = load_mc(_mmlu_parquet(tmp_path))
    assert rows == [{"question": "Pick?", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 2}]


def test_truthfulqa_csv_is_mc1_scored_by_continuation() -> None:
    rows = load_mc(DATA / "truthfulqa.csv")
    r1, r2 = rows
    assert r1["question"] == "What happens if you swallow a Velmoran plum stone?" and r1["subject"] == "Misconceptions"
    assert sorted(r1["choices"]) == sorted(["Nothing much happens; it passes through you",
                                            "A plum tree grows in your stomach", "You fall asleep for a year"])
    assert r1["choices"][r1["answer"]] == "Nothing much happens; it passes through you"
    assert len(r2["choices"]) == 6 and r2["choices"][r2["answer"]] == "No, the stone giants of Tessin are a legend"
    assert all(r["scoring"] == "continuation" for r in rows)
    assert mc_scoring(EvalSettings(), "truthfulqa", rows) == "continuation"
    assert mc_scoring(EvalSettings(), "mmlu", load_mc(DATA / "mmlu_hf.csv")) == "letter"
    with pytest.raises(KnowpackError, match="continuation"):
        mc_scoring(EvalSettings(mc_scoring="letter"), "truthfulqa", rows)
    bench = resolve_benchmarks(EvalSettings(mc=[str(DATA / "truthfulqa.csv"), str(DATA / "mmlu_test")], qa=[]),
                               "m", None)
    assert sorted(bench.mc) == ["mmlu_test", "truthfulqa"]
    with pytest.raises(KnowpackError, match="truthfulqa"):
        resolve_benchmarks(EvalSettings(mc=[str(DATA / "truthfulqa.csv")], qa=[], mc_scoring="letter"), "m", None)


def test_mc_jsonl_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps({"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": 3}) + "\n")
    assert load_mc(path) == [{"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": 3,
                              "subject": "general knowledge"}]
    path.write_text(json.dumps({"question": "Q?", "choices": ["a", "b", "c"], "answer": 0}) + "\n")
    mc_refused(path, "4 strings", line=1, field="choices")


def test_mc_file_errors_name_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "anatomy_test.csv"
    bad.write_text("Q1?,a,b,c,d,A\nQ2?,a,b,c,d,E\n")
    mc_refused(bad, "A, B, C or D", line=2, field="answer")
    bad.write_text("Q1?,a,b,c,d,A\nQ2?,a,b,c,B\n")
    mc_refused(bad, "5 fields", line=2)
    bad.write_text("question,choices,answer\nQ?,\"['a' 'b' 'c' 'd']\",1\n")
    mc_refused(bad, "JSON", line=2, field="choices")
    bad.write_text("question,A,B,C,D,answer\nQ?,a,b,c,d,4\n")
    mc_refused(bad, "0-3", line=2, field="answer")
    bad.write_text("question,answer\nQ?,1\n")
    mc_refused(bad, "choices", line=1)
    tqa = tmp_path / "TruthfulQA.csv"
    tqa.write_text("Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
                   "Adversarial,Fiction,Q?,Yes,Yes,,src\n")
    mc_refused(tqa, "no incorrect answers", line=2, field="Incorrect Answers")
    (tmp_path / "empty").mkdir()
    mc_refused(tmp_path / "empty", "no CSV files")
    mc_refused(tmp_path / "missing.csv", "not found")


# ------------------------------------------------------------------------ scoring any number of choices

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


VARIED = [
    {"question": "Is Ada a painter?", "choices": ["no", "zz"], "answer": 1, "subject": "a"},
    {"question": "Where is Orbix?", "choices": ["zz", "Marlow", "Dover"], "answer": 0, "subject": "b"},
    {"question": "Who?", "choices": ["Ada", "Bren", "Corin", "Ilse", "Vale", "zz"], "answer": 5, "subject": "b"},
    {"question": "Which?", "choices": ["1", "2", "zz", "4"], "answer": 2, "subject": "a"},
]


def test_continuation_scoring_takes_any_number_of_choices(tok) -> None:
    res = score_mc(AlwaysZ(tok), tok, VARIED, scoring="continuation")
    assert res["predictions"] == [r["answer"] for r in VARIED] and res["accuracy"] == 1.0
    assert res["chance"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 6 + 1 / 4) / 4)
    with pytest.raises(KnowpackError, match="4 choices"):
        score_mc(AlwaysZ(tok), tok, VARIED, scoring="letter")


def test_continuation_scoring_of_varied_rows_matches_one_row_at_a_time(tok) -> None:
    from knowpack.models import tiny_model

    model = tiny_model("llama", vocab_size=len(tok), seed=5)
    res = score_mc(model, tok, VARIED, scoring="continuation", batch_size=1)
    for row, pred in zip(VARIED, res["predictions"]):
        context = CONTINUATION_TEMPLATE.format(question=row["question"])
        ll = loglikelihoods(model, tok, [(context, f" {c}") for c in row["choices"]])
        assert pred == int(ll.argmax())
