"""The lm-evaluation-harness adapter, run on lm-eval itself (a dev dependency) and on a stand-in.

Real lm-eval, offline: knowpack's own task `world_mc` (the embedded world's MC benchmark, local
JSON) scores the world's base model and a LoRA-adapted one exactly as knowpack's continuation
scoring does, item by item; errors raised where lm-eval loads task data are classified; a task whose
data needs a download (truthfulqa_mc1) fails offline with knowpack's message.

The stand-in `lm_eval` package stays for what cannot run here: MMLU and TruthfulQA need their data
from the Hub. It records what knowpack hands to `HFLM` and `simple_evaluate` and returns results laid
out as lm-eval 0.4 lays them out for those tasks (`results`/`groups`/`group_subtasks`/`n-shot`/
`n-samples`, metrics keyed `metric,filter`, MMLU a group of groups), so the parsing of groups and the
per-task shots are pinned without the data.
"""

from __future__ import annotations

import errno
import functools
import logging
import socket
import sys
import types
from pathlib import Path

import pytest

from knowpack.config import load_config
from knowpack.errors import ConfigError, KnowpackError
from knowpack.evaluate import harness, stage
from knowpack.evaluate import metrics as M

# subject -> (documents, accuracy); mmlu is a group of groups, as in lm-eval >= 0.4.2
MMLU = {"mmlu_formal_logic": (126, 0.40), "mmlu_philosophy": (311, 0.70), "mmlu_abstract_algebra": (100, 0.30)}
GROUPS = {"mmlu_humanities": ["mmlu_formal_logic", "mmlu_philosophy"], "mmlu_stem": ["mmlu_abstract_algebra"]}
TRUTHFULQA = {"truthfulqa_mc1": (817, 0.2815, 0.0157), "truthfulqa_mc2": (817, 0.4311, 0.0146)}


def _entry(alias: str, acc: float, stderr: float | str) -> dict:
    return {"alias": alias, "acc,none": acc, "acc_stderr,none": stderr}


def fake_results(task: str, num_fewshot: int | None, limit: int | None) -> dict:
    def effective(n: int) -> int:
        return min(limit, n) if limit else n

    if task == "mmlu":
        docs = {t: effective(n) for t, (n, _) in MMLU.items()}
        acc = sum(docs[t] * a for t, (_, a) in MMLU.items()) / sum(docs.values())
        shots = 5 if num_fewshot is None else num_fewshot
        results = {"mmlu": _entry("mmlu", acc, 0.0123),
                   "mmlu_humanities": _entry(" - humanities", 0.6, 0.02),
                   **{t: _entry(f"  - {t[5:]}", a, "N/A" if t.endswith("algebra") else 0.04)
                      for t, (_, a) in MMLU.items()}}
        return {"results": results, "groups": {"mmlu": results["mmlu"]},
                "group_subtasks": {**GROUPS, "mmlu": list(GROUPS)},
                "configs": {t: {"task": t, "num_fewshot": shots} for t in MMLU},
                "versions": {t: 1.0 for t in MMLU}, "n-shot": {t: shots for t in [*MMLU, *GROUPS, "mmlu"]},
                "higher_is_better": {"mmlu": {"acc": True}},
                "n-samples": {t: {"original": n, "effective": docs[t]} for t, (n, _) in MMLU.items()},
                "config": {"model": "LlamaForCausalLM", "limit": limit}, "git_hash": None}
    n, acc, stderr = TRUTHFULQA[task]
    return {"results": {task: {**_entry(task, acc, stderr), "acc_norm,none": acc + 0.01}},
            "group_subtasks": {task: []}, "configs": {task: {"task": task, "num_fewshot": 0}},
            "versions": {task: 2.0}, "n-shot": {task: 0 if num_fewshot is None else num_fewshot},
            "higher_is_better": {task: {"acc": True}},
            "n-samples": {task: {"original": n, "effective": effective(n)}},
            "config": {"model": "LlamaForCausalLM", "limit": limit}, "git_hash": None}


class FakeHFLM:
    instances: list["FakeHFLM"] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        FakeHFLM.instances.append(self)


class FakeTaskManager:
    all_tasks = ["mmlu", *GROUPS, *MMLU, *TRUTHFULQA, "truthfulqa_gen", "hellaswag"]

    def __init__(self, **kwargs):
        self.kwargs = kwargs


@pytest.fixture
def fake_lm_eval(monkeypatch):
    """`lm_eval`, `lm_eval.models.huggingface` and `lm_eval.tasks`, as far as knowpack uses them."""
    FakeHFLM.instances = []
    calls: list[dict] = []
    fail: dict[str, BaseException] = {}

    # the keyword arguments of lm-eval 0.4's simple_evaluate that knowpack passes
    def simple_evaluate(model, model_args=None, tasks=None, num_fewshot=None, batch_size=None, limit=None,
                        log_samples=True, task_manager=None, random_seed=0, numpy_random_seed=1234,
                        torch_random_seed=1234, fewshot_random_seed=1234):
        calls.append({"model": model, "tasks": tasks, "num_fewshot": num_fewshot, "limit": limit,
                      "log_samples": log_samples, "task_manager": task_manager, "random_seed": random_seed,
                      "numpy_random_seed": numpy_random_seed, "torch_random_seed": torch_random_seed,
                      "fewshot_random_seed": fewshot_random_seed, "batch_size": batch_size})
        (task,) = tasks
        if task in fail:
            raise fail[task]
        return fake_results(task, num_fewshot, limit)

    root = types.ModuleType("lm_eval")
    root.simple_evaluate, root.__version__ = simple_evaluate, "0.4.99-fake"
    models = types.ModuleType("lm_eval.models")
    hf = types.ModuleType("lm_eval.models.huggingface")
    hf.HFLM = FakeHFLM
    tasks = types.ModuleType("lm_eval.tasks")
    tasks.TaskManager = FakeTaskManager
    root.models, models.huggingface, root.tasks = models, hf, tasks
    for name, module in {"lm_eval": root, "lm_eval.models": models, "lm_eval.models.huggingface": hf,
                         "lm_eval.tasks": tasks}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return types.SimpleNamespace(calls=calls, fail=fail)


class Opaque:
    """A stand-in for a loaded model or tokenizer: the adapter hands them to HFLM untouched, and the
    fake HFLM never calls them, so a real tiny model would only add seconds of transformers imports."""

    def __init__(self, name: str):
        self.name = name


@pytest.fixture
def model():
    return Opaque("model")


@pytest.fixture
def tok():
    return Opaque("tokenizer")


# --- (a) lm-eval not installed --------------------------------------------------------------------


def test_missing_lm_eval_says_how_to_install_and_how_to_turn_it_off(monkeypatch, model, tok):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what `import lm_eval` sees when it is not installed
    with pytest.raises(KnowpackError) as exc:
        harness.run_harness(model, tok, ["mmlu"])
    msg = str(exc.value)
    assert "pip install 'knowpack[eval]'" in msg and ".venv/bin/pip install -e '.[eval]'" in msg
    assert "eval.harness=[]" in msg
    assert exc.value.exit_code == 2 and isinstance(exc.value, ValueError)
    assert harness.run_harness(model, tok, []) == {}  # off: lm-eval is never imported


def test_run_with_harness_but_no_lm_eval_exits_2_before_any_work(monkeypatch, tmp_path, capsys):
    from knowpack.cli import main

    monkeypatch.setitem(sys.modules, "lm_eval", None)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: world\nfacts: world\n")
    out = tmp_path / "run"
    assert main(["run", str(cfg), "eval.harness=[mmlu:5,truthfulqa_mc2]", "--out", str(out),
                 "cache_dir=" + str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert "knowpack[eval]" in err and "eval.harness=[]" in err and "Traceback" not in err
    assert not out.exists()  # nothing probed, trained or written


# --- (b) what reaches lm-eval, and what comes back --------------------------------------------------


def test_adapter_passes_model_tokenizer_batch_tasks_shots_limit_and_seeds(fake_lm_eval, model, tok):
    scores = harness.run_harness(model, tok, ["mmlu", "truthfulqa_mc1", "truthfulqa_mc2:3"], batch_size=7,
                                 limit=20, seed=11)
    (lm,) = FakeHFLM.instances  # one HFLM for every task
    assert lm.kwargs["pretrained"] is model and lm.kwargs["tokenizer"] is tok and lm.kwargs["batch_size"] == 7
    calls = fake_lm_eval.calls
    assert [c["tasks"] for c in calls] == [["mmlu"], ["truthfulqa_mc1"], ["truthfulqa_mc2"]]
    assert [c["num_fewshot"] for c in calls] == [5, 0, 3]  # each task its own shots; mmlu defaults to 5
    assert all(c["model"] is lm and c["limit"] == 20 and c["log_samples"] is False for c in calls)
    assert all(c[k] == 11 for c in calls for k in ("random_seed", "numpy_random_seed", "torch_random_seed",
                                                    "fewshot_random_seed"))
    assert all(isinstance(c["task_manager"], FakeTaskManager) for c in calls)
    assert calls[0]["batch_size"] is None  # the batch size is set on HFLM, not repeated here

    # aggregate metrics only: the mmlu group, none of its subjects; `,none` filters dropped
    assert set(scores) == {"mmlu", "truthfulqa_mc1", "truthfulqa_mc2"}
    mmlu = scores["mmlu"]
    assert mmlu["acc"] == pytest.approx((20 * 0.40 + 20 * 0.70 + 20 * 0.30) / 60)
    assert mmlu["acc_stderr"] == pytest.approx(0.0123)
    assert mmlu["n"] == 60 and mmlu["num_fewshot"] == 5  # documents summed over the group's subtasks
    assert scores["truthfulqa_mc1"] == {"acc": pytest.approx(0.2815), "acc_stderr": pytest.approx(0.0157),
                                        "acc_norm": pytest.approx(0.2915), "n": 20, "num_fewshot": 0}
    assert scores["truthfulqa_mc2"]["num_fewshot"] == 3 and scores["truthfulqa_mc2"]["acc"] == pytest.approx(0.4311)


def test_results_parser_handles_groups_na_stderr_and_filters():
    res = fake_results("mmlu", None, None)
    res["results"]["mmlu"]["exact_match,strict-match"] = 0.5
    got = harness.parse_results(res, "mmlu")
    assert got["n"] == 126 + 311 + 100 and got["num_fewshot"] == 5
    assert got["exact_match,strict-match"] == 0.5 and "alias" not in got
    assert harness.parse_results(res, "mmlu_abstract_algebra")["acc_stderr"] is None  # lm-eval's "N/A"
    with pytest.raises(KnowpackError, match="no results for task 'hellaswag'"):
        harness.parse_results(res, "hellaswag")


def test_task_specs():
    assert harness.parse_task("mmlu") == ("mmlu", 5) and harness.parse_task("truthfulqa_mc2") == ("truthfulqa_mc2", 0)
    assert harness.parse_task(" hellaswag:10 ") == ("hellaswag", 10)
    assert harness.parse_task("arc_easy") == ("arc_easy", None)  # unknown default: the task's own
    assert harness.parse_task("world_mc") == ("world_mc", None)  # lm-eval's default for a task without one: 0
    for bad in ("mmlu:five", ":5", "mmlu:-1"):
        with pytest.raises(ValueError):
            harness.parse_task(bad)


# --- the evaluation stage and its config --------------------------------------------------------


def test_eval_settings_take_harness_tasks_and_reject_bad_ones(tmp_path):
    from knowpack.runs import RunConfig

    assert RunConfig().eval.harness == [] and RunConfig().eval.harness_limit is None  # off by default
    cfg = load_config(RunConfig, None, ["eval.harness=[mmlu:5,truthfulqa_mc1,truthfulqa_mc2:0]",
                                        "eval.harness_limit=50"])
    assert cfg.eval.harness == ["mmlu:5", "truthfulqa_mc1", "truthfulqa_mc2:0"] and cfg.eval.harness_limit == 50
    for override, needles in [("eval.harness=[mmlu:five]", ("eval", "harness", "mmlu:five", "shots")),
                              ("eval.harness=[mmlu,mmlu:5]", ("eval", "harness", "twice", "mmlu")),
                              ("eval.harness_limit=0", ("eval.harness_limit", ">= 1"))]:
        with pytest.raises(ConfigError) as exc:
            load_config(RunConfig, None, [override])
        assert all(n in str(exc.value) for n in needles), (override, str(exc.value))


def test_stage_passes_its_batch_size_and_limit_to_lm_eval(fake_lm_eval, model, tok, tmp_path):
    settings = stage.EvalSettings(mc=[], qa=[], refusal=None, harness=["mmlu", "truthfulqa_mc2"], harness_limit=10,
                                  batch_size=4)
    bench = stage.resolve_benchmarks(settings, "some-model", None)
    assert bench.harness == [("mmlu", 5), ("truthfulqa_mc2", 0)]
    scores = stage.cached_benchmarks(model, tok, bench, settings, "base-id", tmp_path)
    mc2 = scores["lm_eval:truthfulqa_mc2"]
    assert mc2["n"] == 10 and mc2["stderr"] == pytest.approx(0.0146) and mc2["num_fewshot"] == 0
    assert FakeHFLM.instances[-1].kwargs["batch_size"] == 4 and fake_lm_eval.calls[-1]["limit"] == 10
    assert scores["lm_eval:mmlu"]["n"] == 30 and scores["lm_eval:mmlu"]["num_fewshot"] == 5


# --- (d) metrics -----------------------------------------------------------------------------------


def _side(acc: float, stderr: float, n: int = 14042, task: str = "mmlu", shots: int = 5) -> dict:
    return {"accuracy": acc, "n": n, "kind": "lm_eval", "task": task, "metric": "acc", "stderr": stderr,
            "num_fewshot": shots, "definition": "..."}


def test_harness_drop_before_after_absolute_and_relative():
    d = M.harness_drop(_side(0.68, 0.0037), _side(0.612, 0.0040))
    assert d["before"] == 0.68 and d["after"] == 0.612
    assert d["absolute"] == pytest.approx(0.068) and d["relative"] == pytest.approx(0.1)
    assert (d["stderr_before"], d["stderr_after"]) == (0.0037, 0.0040)
    assert d["task"] == "mmlu" and d["metric"] == "acc" and d["num_fewshot"] == 5
    assert d["denominator"] == 14042 and d["n_questions"] == 14042
    assert "mmlu" in d["definition"] and "5-shot" in d["definition"] and "documents" in d["denominator_counts"]
    assert M.harness_drop(_side(0.0, 0.0), _side(0.1, 0.01))["relative"] is None


def test_compute_metrics_reports_harness_tasks_beside_the_other_benchmarks():
    rows = [{"id": f"e{i}", "category": "Unknown", "p_greedy": 0.0, "p_sample": 0.0, "greedy_answers": ["x"],
             "greedy_correct": [False], "refused": [False]} for i in range(3)]
    ids = [r["id"] for r in rows]
    rec = M.compute_metrics([], rows, rows, [], ids,
                            benchmarks_before={"world_mc": 0.5, "lm_eval:mmlu": _side(0.60, 0.004),
                                               "lm_eval:truthfulqa_mc2": _side(0.40, 0.01, 817, "truthfulqa_mc2", 0)},
                            benchmarks_after={"world_mc": 0.5, "lm_eval:mmlu": _side(0.57, 0.004),
                                              "lm_eval:truthfulqa_mc2": _side(0.44, 0.01, 817, "truthfulqa_mc2", 0)})
    mmlu, mc2 = rec["benchmarks"]["lm_eval:mmlu"], rec["benchmarks"]["lm_eval:truthfulqa_mc2"]
    assert mmlu["before"] == 0.60 and mmlu["after"] == 0.57
    assert mmlu["absolute"] == pytest.approx(0.03) and mmlu["relative"] == pytest.approx(0.05)
    assert mc2["absolute"] == pytest.approx(-0.04) and mc2["denominator"] == 817 and mc2["num_fewshot"] == 0
    assert "lm-evaluation-harness" in mc2["definition"]
    assert "lm-evaluation-harness" not in rec["benchmarks"]["world_mc"]["definition"]
    h = rec["headline"]
    assert h["benchmark_drop"]["lm_eval:mmlu"] == pytest.approx(0.03)
    assert h["mean_benchmark_drop_relative"] == pytest.approx((0.0 + 0.05 - 0.1) / 3)


# --- (e) lm-eval itself, offline, on knowpack's own task -------------------------------------------

WORLD = Path(harness.__file__).resolve().parent.parent / "data" / "world"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """HF_DATASETS_OFFLINE=1 / HF_HUB_OFFLINE=1 as `datasets` and the Hub client read them (at import,
    so their flags are set too), an empty `datasets` cache, and no network at all."""
    import datasets.config
    import huggingface_hub.constants

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")

    def no_network(self, *args, **kwargs):
        raise AssertionError("a test that must run offline opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)


@pytest.fixture(scope="module")
def world():
    from knowpack.evaluate.mc import load_mc
    from knowpack.models import load_model

    model, tok = load_model(WORLD / "model", device="cpu", dtype="float32")
    return model, tok, load_mc(WORLD / "benchmarks" / "mc.jsonl")


@pytest.fixture
def spy(monkeypatch):
    """The real `simple_evaluate`, asked to keep its per-document samples, with every call recorded."""
    import lm_eval
    from lm_eval.evaluator import simple_evaluate

    calls: list[tuple[dict, dict]] = []

    @functools.wraps(simple_evaluate)  # the adapter reads the signature
    def recording(*args, **kwargs):
        kwargs["log_samples"] = True
        results = simple_evaluate(*args, **kwargs)
        calls.append((kwargs, results))
        return results

    monkeypatch.setattr(lm_eval, "simple_evaluate", recording)
    return calls


def lm_eval_choices(results: dict, task: str) -> tuple[list[int], list[list[float]]]:
    """lm-eval's prediction (likeliest choice) and per-choice log-likelihoods of every document."""
    docs = sorted(results["samples"][task], key=lambda d: d["doc_id"])
    lls = [[float(resp[0]) for resp in d["filtered_resps"]] for d in docs]
    return [max(range(len(ll)), key=ll.__getitem__) for ll in lls], lls


def _flat(rows: list[list[float]]) -> list[float]:
    return [x for row in rows for x in row]


def knowpack_choices(model, tok, rows) -> tuple[dict, list[list[float]]]:
    from knowpack.evaluate.mc import CONTINUATION_TEMPLATE, loglikelihoods, score_mc

    res = score_mc(model, tok, rows, scoring="continuation")
    requests = [(CONTINUATION_TEMPLATE.format(question=r["question"]), f" {c}") for r in rows for c in r["choices"]]
    return res, loglikelihoods(model, tok, requests).view(len(rows), 4).tolist()


def test_world_mc_ships_as_an_lm_eval_task_with_absolute_paths(tmp_path):
    import yaml

    assert set(harness.local_tasks()) == {"world_mc"}
    shipped = yaml.safe_load(harness.local_tasks()["world_mc"].read_text())
    assert shipped["task"] == "world_mc"  # the file name is the task name
    assert shipped["doc_to_text"] == "Question: {{question}}\nAnswer:" and "target_delimiter" not in shipped
    (written,) = harness.write_local_tasks(["world_mc"], tmp_path, WORLD)
    files = yaml.safe_load(written.read_text())["dataset_kwargs"]["data_files"]
    assert files == {"test": str((WORLD / "benchmarks" / "mc.jsonl").resolve())}
    with pytest.raises(KnowpackError, match=r"world_mc' reads .*mc.jsonl, which does not exist.*world build"):
        harness.write_local_tasks(["world_mc"], tmp_path, tmp_path / "no-world")
    with pytest.raises(KnowpackError, match="ships no lm-eval task 'mmlu'; it ships world_mc"):
        harness.write_local_tasks(["mmlu"], tmp_path, WORLD)


def test_stage_scores_world_mc_through_lm_eval_as_knowpack_does_and_caches_it(offline, spy, world, tmp_path):
    model, tok, rows = world
    settings = stage.EvalSettings(mc=["auto"], qa=[], refusal=None, harness=["world_mc"], batch_size=8)
    bench = stage.resolve_benchmarks(settings, "world", WORLD)
    scores = stage.cached_benchmarks(model, tok, bench, settings, "world-base", tmp_path)
    ours, theirs = scores["world_mc"], scores["lm_eval:world_mc"]
    assert ours["scoring"] == "continuation" and theirs["metric"] == "acc" and theirs["kind"] == "lm_eval"
    assert theirs["n"] == ours["n"] == len(rows) and theirs["num_fewshot"] == 0
    assert round(theirs["accuracy"] * len(rows)) == round(ours["accuracy"] * len(rows))
    (kwargs, results), = spy
    assert kwargs["tasks"] == ["world_mc"] and kwargs["limit"] is None and kwargs["fewshot_random_seed"] == 1234
    assert kwargs["model"].batch_size == 8 and kwargs["model"].model is model  # the object itself, as loaded
    preds, lls = lm_eval_choices(results, "world_mc")
    res, ours_lls = knowpack_choices(model, tok, rows)
    assert preds == res["predictions"]
    assert _flat(lls) == pytest.approx(_flat(ours_lls), abs=1e-4)  # the same log-likelihoods, not only argmax

    assert stage.cached_benchmarks(model, tok, bench, settings, "world-base", tmp_path) == scores
    assert len(spy) == 1  # the base model's scores come from the cache
    quick = stage.EvalSettings(mc=[], qa=[], refusal=None, harness=["world_mc"], harness_limit=10)
    again = stage.cached_benchmarks(model, tok, stage.resolve_benchmarks(quick, "world", WORLD), quick, "world-base",
                                    tmp_path)
    assert len(spy) == 2 and again["lm_eval:world_mc"]["n"] == 10  # another limit: another cache entry


def test_lm_eval_scores_an_adapted_model_item_by_item_as_knowpack_does(offline, spy):
    import torch
    from peft import LoraConfig, get_peft_model

    from knowpack.evaluate.mc import load_mc
    from knowpack.models import load_model

    base, tok = load_model(WORLD / "model", device="cpu", dtype="float32")  # LoRA wraps it in place: a copy
    rows = load_mc(WORLD / "benchmarks" / "mc.jsonl")
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                            target_modules=["q_proj", "v_proj", "down_proj"]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B starts at zero; random updates move the model off its base answers
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    model.train()
    scores = harness.run_harness(model, tok, ["world_mc"], batch_size=16, progress=False)
    assert model.training  # HFLM's eval() is undone for a model that was training
    model.eval()
    res, ours_lls = knowpack_choices(model, tok, rows)
    (_, results), = spy
    preds, lls = lm_eval_choices(results, "world_mc")
    assert 0.4 < res["accuracy"] < 0.95 and preds != [r["answer"] for r in rows]  # damaged, so the check bites
    assert round(scores["world_mc"]["acc"] * len(rows)) == round(res["accuracy"] * len(rows))
    assert preds == res["predictions"]
    assert _flat(lls) == pytest.approx(_flat(ours_lls), abs=1e-4)


def test_quiet_runs_show_no_progress_bars_and_no_expected_warnings(offline, world, capsys, caplog):
    model, tok, _ = world
    before = logging.getLogger("lm_eval").level  # NOTSET, or WARNING after a CLI test configured the console
    caplog.set_level(logging.INFO)  # as a CLI with -v would set the root logger
    scores = harness.run_harness(model, tok, ["world_mc:0"], limit=8, progress=False)
    assert scores["world_mc"]["n"] == 8 and scores["world_mc"]["num_fewshot"] == 0
    err = capsys.readouterr().err
    assert not any(bar in err for bar in ("it/s", "examples/s", "%|")), err  # lm-eval's bars and datasets'
    lm_records = [r for r in caplog.records if r.name.startswith("lm_eval")]
    assert all(r.levelno >= logging.WARNING for r in lm_records), [r.getMessage() for r in lm_records]
    assert not [r for r in lm_records if r.getMessage().startswith(harness._EXPECTED_WARNINGS)]
    assert logging.getLogger("lm_eval").level == before  # put back
    import datasets.utils
    assert not datasets.utils.are_progress_bars_disabled()

    caplog.clear()
    caplog.set_level(logging.INFO, logger="lm_eval")  # a user who asks lm-eval for more gets all of it
    harness.run_harness(model, tok, ["world_mc:0"], limit=8, progress=False)
    said = [r.getMessage() for r in caplog.records if r.name.startswith("lm_eval")]
    assert any(m.startswith(harness._EXPECTED_WARNINGS) for m in said) and len(said) > 3, said


def test_unknown_task_names_are_checked_against_lm_eval_before_any_scoring(spy, model, tok):
    with pytest.raises(KnowpackError, match=r"no task 'truthfulqa_mc3' \(did you mean 'truthfulqa_mc2', 'truthfulq"):
        harness.run_harness(model, tok, ["mmlu", "truthfulqa_mc3"])
    assert spy == []  # the model (an opaque stand-in here) was never touched


def test_a_task_whose_data_needs_a_download_fails_offline_with_the_ways_out(offline, world):
    model, tok, _ = world
    with pytest.raises(KnowpackError) as exc:
        harness.run_harness(model, tok, ["truthfulqa_mc1"])
    msg = str(exc.value)
    assert "task 'truthfulqa_mc1'" in msg and "HF_DATASETS_OFFLINE" in msg and "eval.mc=" in msg
    assert "eval.harness=[]" in msg and isinstance(exc.value.__cause__, OSError)


def _datasets_errors():
    from datasets.exceptions import DataFilesNotFoundError, DatasetNotFoundError

    return [DatasetNotFoundError("Dataset 'truthfulqa/truthful_qa' doesn't exist on the Hub or cannot be accessed."),
            DataFilesNotFoundError("No (supported) data files found in /data/mc"),
            ValueError("Couldn't find cache for truthful_qa for config 'multiple_choice' (offline mode is enabled)"),
            TimeoutError("The read operation timed out")]


@pytest.mark.parametrize("index", range(4), ids=["not-found", "no-files", "offline-cache", "timeout"])
def test_data_errors_where_lm_eval_loads_the_data_name_the_task_and_the_ways_out(offline, world, monkeypatch,
                                                                                  index):
    import datasets

    error = _datasets_errors()[index]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(error))
    model, tok, _ = world
    with pytest.raises(KnowpackError) as exc:
        harness.run_harness(model, tok, ["world_mc"])
    msg = str(exc.value)
    assert "task 'world_mc'" in msg and type(error).__name__ in msg
    assert "HF_DATASETS_OFFLINE" in msg and "eval.mc=" in msg and "eval.harness=[]" in msg
    assert exc.value.__cause__ is error  # kept for library callers; the CLI prints the message only


@pytest.mark.parametrize("error", [
    PermissionError(errno.EACCES, "Permission denied", "/data/hf/datasets/json.lock"),
    OSError(errno.ENOSPC, "No space left on device"),
], ids=["permission", "disk-full"])
def test_os_errors_that_are_not_missing_data_are_re_raised_unchanged(offline, world, monkeypatch, error):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(error))
    model, tok, _ = world
    with pytest.raises(OSError) as exc:
        harness.run_harness(model, tok, ["world_mc"])
    assert exc.value is error and not isinstance(exc.value, KnowpackError)


def test_errors_while_scoring_are_not_disguised(offline, world, monkeypatch):
    model, tok, _ = world

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(model, "forward", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        harness.run_harness(model, tok, ["world_mc"], limit=2, progress=False)
