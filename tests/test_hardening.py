"""Bad input, tried systematically: every malformed input ends in one clear error, never a traceback.

Hypothesis builds malformed fact files in every text format (native JSONL, Head-to-Tail, ZsRE and
CounterFact JSON, PopQA CSV) and malformed run configs: truncated lines, wrong types, missing fields,
duplicate ids and keys, invalid UTF-8, lone surrogates, control characters, huge numbers and deep
nesting. Each must raise the user error (InputError / ConfigError) that names the file, the line and
the field; the command line must exit 2 with one message and write nothing. Valid-but-odd input
(huge strings, unusual Unicode) must load unchanged. Then malformed model directories, tokenizers
without a pad token, a model too small for LoKI's q and architectures LoKI or LoRA cannot adapt.

Runs are derandomized (fixed examples), so CI tries the same inputs every time; `test_tally` at the
end checks and prints how many malformed inputs were tried.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from knowpack.cli import main
from knowpack.config import load_config
from knowpack.errors import ConfigError, InputError
from knowpack.facts import load_facts
from knowpack.runs import RunConfig

from conftest import FAST

TALLY: dict[str, int] = {}
EXAMPLES = 60 if FAST else 150
HYP = dict(deadline=None, derandomize=True, database=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                  HealthCheck.data_too_large])


def tally(kind: str) -> None:
    TALLY[kind] = TALLY.get(kind, 0) + 1


# --- fact files ---------------------------------------------------------------------------------

def native_row(i: int) -> dict:
    return {"id": f"f{i}", "question": f"Where was person {i} born?", "answers": [f"Town{i}", f"T{i}"],
            "subject": f"person {i}", "relation": "birthplace", "paraphrases": [f"Person {i} was born where?"],
            "popularity": i * 3, "meta": {"k": i}}


def h2t_row(i: int) -> dict:
    return {"question": f"Where was person {i} born?", "answer": {"aliases": [f"Town{i}"]}}


def zsre_row(i: int) -> dict:
    return {"src": f"Where was person {i} born?", "answers": [f"Town{i}"], "rephrase": f"Birthplace of {i}?",
            "subject": f"person {i}"}


def cf_row(i: int) -> dict:
    return {"case_id": i, "requested_rewrite": {"prompt": "{} was born in", "subject": f"Person {i}",
                                                "target_true": {"str": f"Town{i}"}},
            "paraphrase_prompts": [f"Person {i} is from"]}


def popqa_row(i: int) -> dict:
    return {"id": i, "question": f"Where was person {i} born?", "s_pop": i, "possible_answers": [f"Town{i}"]}


FORMATS = {"native": (native_row, ".jsonl"), "head_to_tail": (h2t_row, ".json"), "zsre": (zsre_row, ".json"),
           "counterfact": (cf_row, ".json"), "popqa": (popqa_row, ".csv")}

# (path inside a row, wrong value, field the error must name) per format; paths are key tuples
WRONG = {
    "native": [(("id",), 1.5, "id"), (("id",), [], "id"), (("id",), True, "id"), (("id",), "", "id"),
               (("question",), 7, "question"), (("question",), None, "question"), (("question",), " ", "question"),
               (("question",), ["q"], "question"), (("answers",), "Town", "answers"), (("answers",), [], "answers"),
               (("answers",), [3], "answers[0]"), (("answers",), ["ok", ""], "answers[1]"),
               (("answers",), {"a": 1}, "answers"), (("answers",), None, "answers"),
               (("paraphrases",), "p", "paraphrases"), (("paraphrases",), [None], "paraphrases[0]"),
               (("popularity",), "many", "popularity"), (("popularity",), 1.5, "popularity"),
               (("popularity",), True, "popularity"), (("popularity",), [], "popularity"),
               (("meta",), [], "meta"), (("meta",), "m", "meta"), (("subject",), 3, "subject"),
               (("relation",), {}, "relation"), (("answr",), ["x"], "answr")],
    "head_to_tail": [(("question",), 1, "question"), (("answer",), 5, "answer"), (("answer",), {}, "answer.aliases"),
                     (("answer", "aliases"), "Town", "answer.aliases"),
                     (("answer", "aliases"), [2], "answer.aliases[0]"),
                     (("question",), None, "question")],
    "zsre": [(("src",), [], "src"), (("answers",), "Town", "answers"), (("answers",), [], "answers"),
             (("answers",), [""], "answers[0]"), (("rephrase",), 3, "rephrase"), (("subject",), False, "subject")],
    "counterfact": [(("requested_rewrite",), "x", "requested_rewrite"),
                    (("requested_rewrite", "prompt"), "no placeholder", "requested_rewrite.prompt"),
                    (("requested_rewrite", "prompt"), 4, "requested_rewrite.prompt"),
                    (("requested_rewrite", "subject"), None, "requested_rewrite.subject"),
                    (("requested_rewrite", "target_true"), "Paris", "requested_rewrite.target_true"),
                    (("requested_rewrite", "target_true", "str"), [], "requested_rewrite.target_true.str"),
                    (("paraphrase_prompts",), "p", "paraphrase_prompts"), (("case_id",), 2.5, "case_id")],
    "popqa": [(("possible_answers",), "[1]", "possible_answers[0]"), (("possible_answers",), "[]", "possible_answers"),
              (("possible_answers",), '["a",', "possible_answers"), (("s_pop",), "lots", "s_pop"),
              (("s_pop",), "1.5", "s_pop"), (("possible_answers",), '[""]', "possible_answers[0]")],
}


def render(fmt: str, rows: list, raw_lines: dict[int, str] | None = None) -> tuple[str, list[int]]:
    """File text and the line each row starts on. `raw_lines` replaces a row's text as given."""
    raw_lines = raw_lines or {}
    if fmt == "popqa":
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["id", "question", "s_pop", "possible_answers"])
        for r in rows:
            pa = r["possible_answers"]
            w.writerow([r["id"], r["question"], r["s_pop"], pa if isinstance(pa, str) else json.dumps(pa)])
        return out.getvalue(), [i + 2 for i in range(len(rows))]
    texts = [raw_lines.get(i, json.dumps(r, ensure_ascii=False)) for i, r in enumerate(rows)]
    if FORMATS[fmt][1] == ".jsonl":
        return "".join(t + "\n" for t in texts), [i + 1 for i in range(len(rows))]
    return "[\n" + ",\n".join(texts) + "\n]\n", [i + 2 for i in range(len(rows))]


def put(row: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        row = row[key]
    row[path[-1]] = value


def expect_error(path: Path, fmt: str, line: int | None, field: str | None, *fragments: str) -> InputError:
    with pytest.raises(InputError) as exc:
        load_facts(path, fmt)
    err = exc.value
    msg = str(err)
    assert path.name in msg and err.path == str(path), msg
    if line is not None:
        assert err.line == line and f"line {line}" in msg, msg
    if field is not None:
        assert err.field is not None and err.field.startswith(field), (field, msg)
        assert f"field '{err.field}'" in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return err


fmt_st = st.sampled_from(sorted(FORMATS))


@settings(max_examples=EXAMPLES, **HYP)
@given(data=st.data(), fmt=fmt_st, n=st.integers(1, 4))
def test_wrong_types_missing_fields_and_duplicates_name_file_line_and_field(tmp_path, data, fmt, n):
    make, ext = FORMATS[fmt]
    rows = [make(i) for i in range(n)]
    bad = data.draw(st.integers(0, n - 1), label="row")
    kind = data.draw(st.sampled_from(["wrong", "missing", "duplicate"] if n > 1 and fmt != "counterfact"
                                     else ["wrong", "missing"]), label="kind")
    if kind == "wrong":
        where, value, field = data.draw(st.sampled_from(WRONG[fmt]), label="wrong")
        put(rows[bad], where, value)
    elif kind == "missing":
        required = {"native": ["id", "question", "answers"], "head_to_tail": ["answer"], "zsre": ["answers"],
                    "counterfact": ["requested_rewrite"], "popqa": ["possible_answers"]}[fmt]
        field = data.draw(st.sampled_from(required), label="missing")
        if fmt == "popqa":
            rows[bad][field] = ""  # an empty CSV cell is a missing value
        else:
            del rows[bad][field]
    else:
        other = data.draw(st.integers(0, n - 1).filter(lambda j: j != bad), label="other")
        if fmt in ("native", "popqa"):  # an id given twice
            rows[bad]["id"] = rows[other]["id"]
        else:  # no ids in the file: the same fact twice gives the same derived id
            rows[bad] = json.loads(json.dumps(rows[other]))
        field = "id"
    text, lines = render(fmt, rows)
    path = tmp_path / f"bad{ext}"
    path.write_text(text, encoding="utf-8")
    expect_error(path, fmt, lines[bad] if kind != "duplicate" else lines[max(bad, other)], field)
    tally(f"facts: {kind}")


@settings(max_examples=EXAMPLES, **HYP)
@given(data=st.data(), fmt=st.sampled_from(["native", "head_to_tail", "zsre", "counterfact"]), n=st.integers(1, 3))
def test_truncated_files_name_the_line(tmp_path, data, fmt, n):
    make, ext = FORMATS[fmt]
    text, lines = render(fmt, [make(i) for i in range(n)])
    # cut inside the last object, before its closing brace: never valid JSON
    last_close = text.rstrip().rstrip("]").rstrip().rfind("}")
    start = text.rfind("\n", 0, last_close) + 1
    cut = data.draw(st.integers(start + 1, last_close), label="cut")
    path = tmp_path / f"cut{ext}"
    path.write_text(text[:cut], encoding="utf-8")
    err = expect_error(path, fmt, None, None, "invalid JSON")
    assert err.line is not None and 1 <= err.line <= text[:cut].count("\n") + 1
    tally("facts: truncated")


ODD_INVALID = [
    ("surrogate", lambda s: s[:-1] + "\\ud800" + s[-1]),        # a JSON escape that is not Unicode
    ("low surrogate", lambda s: s[:-1] + "\\udfff" + s[-1]),
]


@settings(max_examples=EXAMPLES, **HYP)
@given(data=st.data(), fmt=st.sampled_from(["native", "zsre", "head_to_tail"]), n=st.integers(1, 3))
def test_invalid_unicode_and_encoding(tmp_path, data, fmt, n):
    make, ext = FORMATS[fmt]
    rows = [make(i) for i in range(n)]
    bad = data.draw(st.integers(0, n - 1), label="row")
    kind = data.draw(st.sampled_from(["surrogate", "utf8", "dupkey", "bigint", "deep"]), label="kind")
    qkey = {"native": "question", "zsre": "src", "head_to_tail": "question"}[fmt]
    raw = json.dumps(rows[bad], ensure_ascii=False)
    field = None
    if kind == "surrogate":
        esc = data.draw(st.sampled_from(["\\ud800", "\\udbff", "\\udc00", "\\udfff"]), label="escape")
        raw = raw.replace(f'"{qkey}": "', f'"{qkey}": "{esc}', 1)
        field = qkey
    elif kind == "dupkey":
        raw = raw[:-1] + f', "{qkey}": "again"}}'
        field = qkey
    elif kind == "bigint":
        raw = raw[:-1] + f', "{"popularity" if fmt == "native" else "x"}": {"9" * 5000}}}'
    elif kind == "deep":
        raw = raw[:-1] + ', "meta": ' + "[" * 50_000 + "]" * 50_000 + "}"
    text, lines = render(fmt, rows, {bad: raw})
    data_bytes = text.encode("utf-8")
    if kind == "utf8":  # bytes that are not UTF-8, inside the bad row's question
        junk = data.draw(st.sampled_from([b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\x80"]), label="bytes")
        pos = data_bytes.index(f"person {bad} born".encode())
        data_bytes = data_bytes[:pos] + junk + data_bytes[pos:]
    path = tmp_path / f"odd{ext}"
    path.write_bytes(data_bytes)
    fragment = {"surrogate": "surrogate", "utf8": "UTF-8", "dupkey": "twice", "bigint": "digits",
                "deep": "nested"}[kind]
    expect_error(path, fmt, lines[bad], field, fragment)
    tally(f"facts: {kind}")


odd_text = st.text(alphabet=st.sampled_from(
    ["\u200b", "\u202e", "\u2028", "\u2029", "\x00", "\x1b", "\t", "\u0301", "\ufeff", "\U0001f600", "é", "漢",
     "\r", "\x85", "a", " "]), min_size=1, max_size=12).filter(lambda s: s.strip() != "")


@settings(max_examples=EXAMPLES // 2, **HYP)
@given(question=odd_text, answer=odd_text, big=st.sampled_from([0, 1, 2_000_000]))
def test_odd_but_valid_unicode_and_huge_strings_load_unchanged(tmp_path, question, answer, big):
    row = {"id": "x" * big or "odd", "question": question + "y" * big, "answers": [answer]}
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    fact = load_facts(path)[0]
    assert (fact.id, fact.question, fact.answers) == (row["id"], row["question"], (answer,))
    tally("facts: odd but valid (loads unchanged)")


# --- configs ------------------------------------------------------------------------------------

def base_config() -> dict:
    return {"model": "m", "facts": "f.jsonl", "device": "cpu", "seed": 1,
            "probe": {"n_prompts": 2, "shots": 1, "n_samples": 2, "max_new_tokens": 4},
            "compose": {"n_unknown": 3, "mixing": "paraphrase", "k": 1},
            "train": {"method": "lora", "epochs": 2, "batch_size": 4, "lr": 1e-2, "lora": {"r": 2}},
            "eval": {"mc": [], "qa": [], "refusal": None}}


CONFIG_WRONG = [  # dotted key, bad value
    ("seed", "one"), ("seed", 1.5), ("device", 3), ("trust_remote_code", "yes"), ("probe.n_prompts", 0),
    ("probe.n_prompts", "10"), ("probe.temperature", -1.0), ("probe.match", "fuzzy"), ("probe.refusal_patterns", 5),
    ("compose.n_unknown", []), ("compose.mixing", "paraphrases"), ("train.method", "lorra"),
    ("train.lr", "fast"), ("train.epochs", -2), ("train.schedule", "step"), ("train.lora.r", 0),
    ("train.lora.targets", "gate_proj"), ("train.loki.q", 250), ("train.early_stopping.enabled", "on"),
    ("eval.mc", "file.jsonl"), ("eval.limit", 0), ("train", 5), ("probe", [1, 2]), ("dtype", "fp8"),
]


def _set(cfg: dict, dotted: str, value) -> bool:
    *head, last = dotted.split(".")
    for h in head:
        cfg = cfg.setdefault(h, {})
        if not isinstance(cfg, dict):  # the section itself was set to a bad value
            return False
    cfg[last] = value
    return True


def names_key(problem: str, key: str) -> bool:
    """Whether a config problem is about `key`: the config error format is "KEY (where): message"."""
    return problem.startswith((f"{key} (", f"{key}:"))


@settings(max_examples=EXAMPLES, **HYP)
@given(data=st.data(), n_bad=st.integers(1, 3))
def test_bad_configs_report_every_key_and_its_line(tmp_path, data, n_bad):
    cfg = base_config()
    picks = data.draw(st.lists(st.sampled_from(CONFIG_WRONG), min_size=n_bad, max_size=n_bad,
                               unique_by=lambda kv: kv[0].split(".")[0]), label="wrong")
    unknown = data.draw(st.sampled_from([None, "probe.n_prompt", "trian", "train.lora.rank", "compose.extra"]),
                        label="unknown")
    for key, value in picks:
        _set(cfg, key, value)
    if unknown and _set(cfg, unknown, 1):
        picks = picks + [(unknown, None)]
    path = tmp_path / "c.yaml"
    text = yaml.safe_dump(cfg, sort_keys=False)
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(RunConfig, path)
    msg = str(exc.value)
    assert str(path) in msg
    for key, _ in picks:
        # a problem names its full dotted key first: "train.lora.r (line 20): ..."; a bare leaf such as
        # "r" would also match "error" or another key, so only the whole key counts
        hits = [p for p in exc.value.problems if names_key(p, key)]
        assert hits, (key, msg)
        assert any("(line " in p for p in hits), (key, msg)  # where in the file
    tally("config: wrong types, bad values, unknown keys")


BAD_OVERRIDES = {  # override -> (how its problem starts, what else it says)
    "train.lr": ("override 'train.lr' ", "not KEY=VALUE"),
    "=3": ("override '=3' ", "not KEY=VALUE"),
    "train..lr=1": ("override 'train..lr=1' ", "not KEY=VALUE"),
    "probe.n_prompts=[1": ("override 'probe.n_prompts=[1'", "cannot read the value as YAML"),
    "seed.x=2": ("seed (", "{'x': 2}"),  # a section given to a plain key
    "probe.shots=-1": ("probe.shots (from override 'probe.shots=-1')", "got -1"),
    "train.method=lorra": ("train.method (from override 'train.method=lorra')", "'lorra'"),
}
GOOD_OVERRIDES = ["seed=1", "train.lr=1e-3", "compose.k=2"]


@settings(max_examples=EXAMPLES // 2, **HYP)
@given(data=st.data())
def test_broken_yaml_and_overrides(tmp_path, data):
    text = yaml.safe_dump(base_config(), sort_keys=False)
    kind = data.draw(st.sampled_from(["control", "duplicate", "syntax", "override", "truncated"]), label="kind")
    overrides: list[str] = []
    lines = text.splitlines(keepends=True)
    at = data.draw(st.integers(1, len(lines) - 1), label="line")
    if kind == "control":
        ch = data.draw(st.sampled_from(["\x00", "\x07", "\x1b", "\x7f", "\ufffe"]), label="char")
        lines[at] = lines[at].rstrip("\n") + ch + "\n"
    elif kind == "duplicate":
        lines.append(lines[0])  # a top-level key given again
    elif kind == "syntax":  # a line YAML cannot read, inserted anywhere
        lines.insert(at, data.draw(st.sampled_from(["bad: [unclosed\n", "bad: {a: 1\n", '"unterminated\n',
                                                    "- item\n", "bad: 'x\n"]), label="syntax"))
    elif kind == "override":
        bad = data.draw(st.lists(st.sampled_from(sorted(BAD_OVERRIDES)), min_size=1, max_size=2,
                                 unique_by=lambda o: o.partition("=")[0]), label="bad overrides")
        clash = {o.partition("=")[0].split(".")[0] for o in bad}
        good = data.draw(st.lists(st.sampled_from([o for o in GOOD_OVERRIDES if o.split(".")[0].split("=")[0]
                                                   not in clash]), max_size=1), label="good overrides")
        overrides = data.draw(st.permutations(bad + good), label="overrides")
    elif kind == "truncated":
        cut = data.draw(st.integers(1, len(text) - 1), label="cut")
        lines = [text[:cut]]
    path = tmp_path / "c.yaml"
    path.write_text("".join(lines), encoding="utf-8")
    try:
        load_config(RunConfig, path, overrides)
    except ConfigError as exc:
        msg = str(exc)
        assert str(path) in msg or "overrides" in msg or "override" in msg, msg
        if kind in ("control", "duplicate", "syntax"):
            assert "line " in msg, msg
        for item in overrides:
            if item in BAD_OVERRIDES:  # every drawn bad override is reported, by name, with what is wrong
                head, fragment = BAD_OVERRIDES[item]
                assert any(p.startswith(head) and fragment in p for p in exc.problems), (item, msg)
        tally(f"config: {kind}")
        return
    assert kind == "truncated"  # a cut at a line end can leave valid YAML; anything else must fail
    tally("config: truncated (still valid)")


# --- the command line: exit 2, one message, nothing written ----------------------------------------

@settings(max_examples=12 if FAST else 30, **HYP)
@given(fmt=fmt_st, data=st.data())
def test_commands_exit_2_and_write_nothing(tmp_path_factory, tiny_dir, fmt, data, capsys):
    tmp = tmp_path_factory.mktemp("cli")
    make, ext = FORMATS[fmt]
    rows = [make(i) for i in range(3)]
    where, value, field = data.draw(st.sampled_from(WRONG[fmt]), label="wrong")
    put(rows[1], where, value)
    facts = tmp / f"facts{ext}"
    facts.write_text(render(fmt, rows)[0], encoding="utf-8")
    cfg = tmp / "run.yaml"
    cfg.write_text(yaml.safe_dump({**base_config(), "model": str(tiny_dir), "facts": str(facts),
                                   "cache_dir": str(tmp / "cache")}))
    command = data.draw(st.sampled_from(["run", "train", "probe", "facts"]), label="command")
    out = tmp / "out"
    argv = {"run": ["run", str(cfg), "--out", str(out)], "train": ["train", str(cfg), "--out", str(out)],
            "probe": ["probe", "--model", str(tiny_dir), "--facts", str(facts), "--out", str(out), "--cache-dir",
                      str(tmp / "cache")],
            "facts": ["facts", "check", str(facts)]}[command]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("knowpack: error: ") and str(facts) in err and "Traceback" not in err
    assert not out.exists() and not (tmp / "cache").exists()
    tally(f"command line: {command} with a bad fact file")


# --- models and tokenizers ----------------------------------------------------------------------

def _model_variants(src: Path, tok):
    from knowpack.models import tiny_model

    def edit_config(d, **changes):
        cfg = json.loads((d / "config.json").read_text())
        for k, v in changes.items():
            if v is None:
                cfg.pop(k, None)
            else:
                cfg[k] = v
        (d / "config.json").write_text(json.dumps(cfg))

    def wrong_shapes(d):
        tiny_model("llama", vocab_size=len(tok), hidden_size=48).save_pretrained(str(d / "other"))
        shutil.move(str(d / "other" / "model.safetensors"), str(d / "model.safetensors"))

    return {
        "missing directory": (lambda d: shutil.rmtree(d), "does not exist"),
        "a file, not a directory": (lambda d: (shutil.rmtree(d), d.write_text("x")), "is a file"),
        "no config.json": (lambda d: (d / "config.json").unlink(), "config.json"),
        "no weights": (lambda d: (d / "model.safetensors").unlink(), "weights"),
        "config.json not JSON": (lambda d: (d / "config.json").write_text("{oops"), "not a valid JSON"),
        "unknown model_type": (lambda d: edit_config(d, model_type="nosucharch"), "architecture"),
        "no model_type": (lambda d: edit_config(d, model_type=None, architectures=None), "model_type"),
        "truncated weights": (lambda d: (d / "model.safetensors").write_bytes(
            (d / "model.safetensors").read_bytes()[:777]), "corrupt or truncated"),
        "weights of another shape": (wrong_shapes, "do not fit the shapes"),
        "no tokenizer files": (lambda d: [(d / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json")],
                               "tokenizer"),
        "tokenizer.json not JSON": (lambda d: (d / "tokenizer.json").write_text("garbage"), "tokenizer"),
        "tokenizer without pad or EOS": (lambda d: _strip_tokens(d, "pad_token", "eos_token"), "pad"),
    }


def _strip_tokens(d: Path, *names: str) -> None:
    for fname in ("tokenizer_config.json", "special_tokens_map.json"):
        f = d / fname
        if f.exists():
            cfg = json.loads(f.read_text())
            for n in names:
                cfg.pop(n, None)
            f.write_text(json.dumps(cfg))


def test_malformed_model_directories_exit_2_naming_the_problem(tmp_path, tiny_dir, tok, capsys):
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps(native_row(i)) + "\n" for i in range(3)))
    for name, (damage, fragment) in _model_variants(tiny_dir, tok).items():
        d = tmp_path / name.replace(" ", "-")
        shutil.copytree(tiny_dir, d)
        damage(d)
        out = tmp_path / f"out-{d.name}"
        capsys.readouterr()
        assert main(["probe", "--model", str(d), "--facts", str(facts), "--out", str(out), "--device", "cpu",
                     "--cache-dir", str(tmp_path / "cache")]) == 2, name
        err = capsys.readouterr().err
        msg = err[err.find("knowpack: error: "):]  # (after transformers' own loading bar, if any)
        assert "knowpack: error: " in err and str(d) in msg and fragment in msg, (name, err)
        assert "Traceback" not in err and not out.exists(), name
        tally("model: malformed directory or tokenizer")


def test_tokenizer_without_pad_token_uses_eos(tmp_path, tiny_dir):
    from knowpack.models import load_model

    d = tmp_path / "nopad"
    shutil.copytree(tiny_dir, d)
    _strip_tokens(d, "pad_token")
    _, tok = load_model(str(d), device="cpu")
    assert tok.pad_token == tok.eos_token is not None
    tally("model: tokenizer without a pad token (loads, EOS pads)")


def _run_config(tmp: Path, model: Path, **train) -> Path:
    facts = tmp / "facts.jsonl"
    facts.write_text("".join(json.dumps(native_row(i)) + "\n" for i in range(4)))
    mc = tmp / "mc.jsonl"
    mc.write_text(json.dumps({"question": "Pick?", "choices": ["a", "b", "c", "d"], "answer": 0,
                              "subject": "t"}) + "\n")
    cfg = {**base_config(), "model": str(model), "facts": str(facts), "cache_dir": str(tmp / "cache")}
    cfg["train"] = {**cfg["train"], **train, "loki": {**train.get("loki", {}), "attribution_data": str(mc)}}
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    d = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128)).save_pretrained(
        str(d))
    tok.save_pretrained(str(d))
    return d


@pytest.mark.parametrize("case, train, fragment", [
    ("q too small: k = 0 rows per layer", {"method": "loki", "loki": {"q": 1}}, "too small for q=1"),
    ("q too small for a global strategy", {"method": "loki", "loki": {"q": 0.5, "strategy": "global_lowest"}},
     "too small for q=0.5"),
    ("LoKI on an unsupported architecture", {"method": "loki"}, "not supported by LoKI"),
    ("LoRA targets the architecture lacks", {"method": "lora"}, "not found in the model"),
])
def test_methods_that_cannot_fit_the_model_exit_2_before_writing(tmp_path, tiny_dir, gpt2_dir, capsys, case, train,
                                                                  fragment):
    model = gpt2_dir if "architecture" in case else tiny_dir
    cfg = _run_config(tmp_path, model, **train)
    for command in ("run", "train"):
        out = tmp_path / f"out-{command}"
        capsys.readouterr()
        assert main([command, str(cfg), "--out", str(out)]) == 2, case
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err, (case, err)
        assert not out.exists() and not (tmp_path / "cache").exists(), case
        tally(f"model: {case}")


def test_attribution_on_an_unsupported_architecture(tmp_path, gpt2_dir, capsys):
    cfg = _run_config(tmp_path, gpt2_dir)
    mc = cfg.parent / "mc.jsonl"
    out = tmp_path / "scores.safetensors"
    assert main(["attribute", "--model", str(gpt2_dir), "--prompts", str(mc), "--out", str(out),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "not supported by LoKI" in err and "gpt2" in err and not out.exists()
    tally("model: KVA on an unsupported architecture")


def test_tally():
    """Runs last in this file: how many malformed inputs were tried (printed with -s, checked always)."""
    total = sum(v for k, v in TALLY.items() if "valid" not in k)
    lines = [f"  {v:5d}  {k}" for k, v in sorted(TALLY.items())]
    print("\nbad inputs tried:\n" + "\n".join(lines) + f"\n  {total:5d}  malformed in all, every one rejected cleanly")
    if len(TALLY) >= 20:  # the whole file ran (not a -k selection)
        assert total >= (250 if FAST else 600)


def test_saved_tokenizers_load_in_every_supported_transformers_release(tmp_path):
    """transformers 5 writes `TokenizersBackend` as the class, which 4.x and tools pinned to it cannot import."""
    import json

    from knowpack.models import load_tokenizer, tiny_tokenizer

    tiny_tokenizer(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    tok = load_tokenizer(str(tmp_path))
    assert tok("Question: x")["input_ids"] == tiny_tokenizer()("Question: x")["input_ids"]
