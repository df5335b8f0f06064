"""The lm-evaluation-harness adapter, with a stand-in `lm_eval` package (lm-eval itself is an extra).

The fake records what knowpack hands to `HFLM` and `simple_evaluate` and returns results laid out as
lm-eval 0.4 lays them out (`results`/`groups`/`group_subtasks`/`n-shot`/`n-samples`, metrics keyed
`metric,filter`), so these tests pin the adapter's contract with lm-eval without its data.
"""

from __future__ import annotations

import errno
import sys
import types

import pytest

from knowpack.config import load_config
from knowpack.errors import ConfigError, KnowpackError
from knowpack.evaluate import harness, stage
from knowpack.evaluate import metrics as M

# subject -> (documents, accuracy); mmlu is a group of groups, as in lm-eval >= 0.4.2
MMLU = {"mmlu_formal_logic": (126, 0.40), "mmlu_philosophy": (311, 0.70), "mmlu_abstract_algebra": (100, 0.30)}
GROUPS = {"mmlu_humanities": ["mmlu_formal_logic", "mmlu_philosophy"], "mmlu_stem": ["mmlu_abstract_algebra"]}
TRUTHFULQA = {"truthfulqa_mc1": (817, 0.2815, 0.0157), "truthfulqa_mc2": (817, 0.4311, 0.0146)}


class DatasetNotFoundError(FileNotFoundError):
    """What `datasets` raises offline for a dataset that is not in the cache (same name and base)."""


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


def test_task_specs_and_unknown_task_names(fake_lm_eval, model, tok):
    assert harness.parse_task("mmlu") == ("mmlu", 5) and harness.parse_task("truthfulqa_mc2") == ("truthfulqa_mc2", 0)
    assert harness.parse_task(" hellaswag:10 ") == ("hellaswag", 10)
    assert harness.parse_task("arc_easy") == ("arc_easy", None)  # unknown default: the task's own
    for bad in ("mmlu:five", ":5", "mmlu:-1"):
        with pytest.raises(ValueError):
            harness.parse_task(bad)
    with pytest.raises(KnowpackError, match=r"no task 'truthfulqa_mc3' \(did you mean 'truthfulqa_mc2', 'truthfulq"):
        harness.run_harness(model, tok, ["mmlu", "truthfulqa_mc3"])
    assert fake_lm_eval.calls == []  # names are checked before anything is scored


# --- (c) task data not available ----------------------------------------------------------------


@pytest.mark.parametrize("error", [
    DatasetNotFoundError("Dataset 'truthfulqa/truthful_qa' doesn't exist on the Hub or cannot be accessed."),
    ConnectionError("Couldn't reach 'truthfulqa/truthful_qa' on the Hub (LocalEntryNotFoundError)"),
    ValueError("Couldn't find cache for truthful_qa for config 'multiple_choice' (offline mode is enabled)"),
    TimeoutError("The read operation timed out"),
], ids=["not-found", "connection", "offline-cache", "timeout"])
def test_missing_task_data_names_the_task_and_the_ways_out(fake_lm_eval, model, tok, error):
    fake_lm_eval.fail["truthfulqa_mc1"] = error
    with pytest.raises(KnowpackError) as exc:
        harness.run_harness(model, tok, ["truthfulqa_mc1"])
    msg = str(exc.value)
    assert "task 'truthfulqa_mc1'" in msg and type(error).__name__ in msg
    assert "HF_DATASETS_OFFLINE" in msg and "eval.mc=" in msg and "eval.harness=[]" in msg
    assert exc.value.__cause__ is error  # kept for library callers; the CLI prints the message only


def test_other_errors_inside_lm_eval_are_not_disguised(fake_lm_eval, model, tok):
    fake_lm_eval.fail["mmlu"] = RuntimeError("CUDA out of memory")
    with pytest.raises(RuntimeError, match="out of memory"):
        harness.run_harness(model, tok, ["mmlu"])


@pytest.mark.parametrize("error", [
    PermissionError(errno.EACCES, "Permission denied", "/data/hf/datasets/truthful_qa.lock"),
    OSError(errno.ENOSPC, "No space left on device"),
], ids=["permission", "disk-full"])
def test_os_errors_that_are_not_missing_data_are_re_raised_unchanged(fake_lm_eval, model, tok, error):
    fake_lm_eval.fail["truthfulqa_mc1"] = error
    with pytest.raises(OSError) as exc:
        harness.run_harness(model, tok, ["truthfulqa_mc1"])
    assert exc.value is error and not isinstance(exc.value, KnowpackError)


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


def test_stage_scores_harness_tasks_and_caches_the_base_model(fake_lm_eval, model, tok, tmp_path):
    settings = stage.EvalSettings(mc=[], qa=[], refusal=None, harness=["mmlu", "truthfulqa_mc2"], harness_limit=10,
                                  batch_size=4)
    bench = stage.resolve_benchmarks(settings, "some-model", None)
    assert bench.harness == [("mmlu", 5), ("truthfulqa_mc2", 0)]
    scores = stage.cached_benchmarks(model, tok, bench, settings, "base-id", tmp_path)
    assert set(scores) == {"lm_eval:mmlu", "lm_eval:truthfulqa_mc2"}
    mc2 = scores["lm_eval:truthfulqa_mc2"]
    assert mc2["kind"] == "lm_eval" and mc2["metric"] == "acc" and mc2["accuracy"] == pytest.approx(0.4311)
    assert mc2["n"] == 10 and mc2["stderr"] == pytest.approx(0.0146) and mc2["num_fewshot"] == 0
    assert FakeHFLM.instances[-1].kwargs["batch_size"] == 4 and fake_lm_eval.calls[-1]["limit"] == 10
    n_calls = len(fake_lm_eval.calls)
    assert stage.cached_benchmarks(model, tok, bench, settings, "base-id", tmp_path) == scores
    assert len(fake_lm_eval.calls) == n_calls  # the base model's scores come from the cache
    other = stage.EvalSettings(mc=[], qa=[], refusal=None, harness=["mmlu"], harness_limit=10)
    stage.cached_benchmarks(model, tok, stage.resolve_benchmarks(other, "some-model", None), other, "base-id",
                            tmp_path)
    assert len(fake_lm_eval.calls) == n_calls + 1  # other tasks: another cache entry


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
