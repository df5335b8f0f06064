"""lm-evaluation-harness on a model that is already loaded (the `eval` extra: `pip install 'knowpack[eval]'`).

    from knowpack.evaluate.harness import run_harness
    scores = run_harness(model, tok, ["mmlu:5", "truthfulqa_mc1:0", "truthfulqa_mc2:0"], batch_size=16)
    scores["mmlu"]["acc"], scores["mmlu"]["acc_stderr"], scores["mmlu"]["n"]

The model and tokenizer go to lm-eval as objects (`HFLM(pretrained=model, tokenizer=tok, batch_size=...)`),
so a trained adapter is scored as it is, without saving or merging it. Each task is a name or
`name:shots`; MMLU defaults to 5 shots and TruthfulQA MC1/MC2 to 0, the settings of the knowledge
packing paper. Every task runs in its own `simple_evaluate` call, with its own `num_fewshot` and fixed
seeds, so the same task gets the same prompts before and after training and an error names its task.

`lm_eval` is imported when asked for, never at module import: knowpack works without it and says
how to install it. lm-eval reads task data through `datasets`, from the Hub or from the local cache
(`HF_DATASETS_OFFLINE=1` with a pre-filled cache); when the data cannot be loaded the error names the
task and the ways out, including scoring local MMLU-format files with `eval.mc` instead.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import numbers
from typing import Any, Mapping, Sequence

from knowpack.errors import KnowpackError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'knowpack[eval]' (in a checkout: .venv/bin/pip install -e '.[eval]')"
OFF_HINT = "or turn lm-eval off with eval.harness=[]"
#: the knowledge-packing paper's general-capability benchmarks, with their shots
SUGGESTED_TASKS = ("mmlu:5", "truthfulqa_mc1:0", "truthfulqa_mc2:0")
DEFAULT_FEWSHOT = {"mmlu": 5, "truthfulqa_mc1": 0, "truthfulqa_mc2": 0}
#: the one seed passed for all four of lm-eval's seeds (random, numpy, torch, few-shot sampler); fixed, so
#: before and after see the same few-shot examples. 1234 is `simple_evaluate`'s own default for the numpy,
#: torch and few-shot seeds (lm-eval >= 0.4); its default for Python's `random` is 0, which knowpack overrides.
DEFAULT_SEED = 1234
#: the accuracy-like metric reported as a task's headline, first one present wins
PRIMARY_METRICS = ("acc", "acc_norm", "exact_match", "f1")
_NOT_METRICS = {"alias", "samples", "name", "sample_len", " "}


def parse_task(spec: str | tuple[str, int | None]) -> tuple[str, int | None]:
    """`"mmlu:5"` → `("mmlu", 5)`; a bare name takes its default shots (None: the task's own default)."""
    if isinstance(spec, tuple):
        name, shots = spec
    else:
        name, sep, rest = str(spec).strip().partition(":")
        name = name.strip()
        if sep:
            try:
                shots = int(rest)
            except ValueError:
                raise ValueError(f"lm-eval task '{spec}': the part after ':' must be a number of shots, "
                                 f"e.g. 'mmlu:5'") from None
        else:
            shots = DEFAULT_FEWSHOT.get(name)
    if not name:
        raise ValueError(f"lm-eval task '{spec}' has no name; use e.g. {', '.join(SUGGESTED_TASKS)}")
    if shots is not None and shots < 0:
        raise ValueError(f"lm-eval task '{spec}': shots must be >= 0, got {shots}")
    return name, shots


def require_lm_eval() -> tuple[Any, Any]:
    """The `lm_eval` module and its `HFLM` class, or a KnowpackError that says how to install it."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as exc:
        raise KnowpackError(f"eval.harness needs lm-evaluation-harness, which cannot be imported ({exc}): "
                            f"{INSTALL_HINT}; {OFF_HINT}") from None
    return lm_eval, HFLM


def _task_manager() -> Any:
    """lm-eval's task index (>= 0.4.1), built once for all tasks; None where this lm-eval has none."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        return None
    return TaskManager()


def _check_names(names: Sequence[str], manager: Any) -> None:
    known = list(getattr(manager, "all_tasks", None) or ())
    if not known:
        return
    unknown = [n for n in names if n not in known]
    if unknown:
        hints = []
        for n in unknown:
            close = difflib.get_close_matches(n, known, n=3)
            hints.append(f"'{n}'" + (f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""))
        raise KnowpackError(f"lm-eval has no task {', '.join(hints)}; list them with `lm-eval ls tasks`, "
                            f"suggested: {', '.join(SUGGESTED_TASKS)}")


_DATA_ERROR_NAMES = ("DatasetNotFoundError", "DataFilesNotFoundError", "DatasetGenerationError", "EmptyDatasetError",
                     "OfflineModeIsEnabled", "LocalEntryNotFoundError", "HfHubHTTPError", "ConnectionError",
                     "Timeout")  # "ConnectionError" and "Timeout" also match requests' (ReadTimeout, ...)
_DATA_WORDS = ("offline", "dataset", "hub", "connect", "internet", "download", "cache", "not found",
               "couldn't find", "could not find", "doesn't exist")


def _is_data_error(exc: BaseException) -> bool:
    """Whether `exc` is `datasets`/the Hub failing to fetch task data, not a bug in the evaluation.

    Other OSErrors (disk full, permission denied, ...) are not: they surface unchanged.
    """
    if any(c.__name__ in _DATA_ERROR_NAMES for c in type(exc).__mro__):
        return True
    if isinstance(exc, (FileNotFoundError, ConnectionError, TimeoutError)):  # missing file, network down, timeout
        return True
    return isinstance(exc, ValueError) and any(w in str(exc).lower() for w in _DATA_WORDS)


def _data_error(task: str, exc: BaseException) -> KnowpackError:
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return KnowpackError(
        f"lm-eval could not load the data of task '{task}' ({type(exc).__name__}: {first}). lm-eval reads task "
        f"data with `datasets`: download it once where there is internet, then set HF_DATASETS_OFFLINE=1 (and "
        f"HF_DATASETS_CACHE if the cache lives elsewhere) so it is read from the cache; or score local "
        f"MMLU-format JSONL files instead with eval.mc=[path/to/mmlu.jsonl] and eval.harness=[]")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy scalars are Real too
        return None
    return float(value)


def _n_docs(results: Mapping[str, Any], task: str) -> int | None:
    """Documents scored for `task`; for a group (mmlu), summed over its subtasks."""
    samples = results.get("n-samples") or {}
    if task in samples and isinstance(samples[task], Mapping):
        n = samples[task].get("effective", samples[task].get("original"))
        return int(n) if isinstance(n, int) else None
    subtasks = (results.get("group_subtasks") or {}).get(task)
    if subtasks:
        counts = [_n_docs(results, t) for t in subtasks]
        return sum(counts) if all(c is not None for c in counts) else None  # type: ignore[misc]
    entry = (results.get("results") or {}).get(task) or {}
    return int(entry["samples"]) if isinstance(entry.get("samples"), int) else None


def parse_results(results: Mapping[str, Any], task: str, num_fewshot: int | None = None) -> dict[str, Any]:
    """The aggregate metrics of `task` from a `simple_evaluate` result, as `{metric: value}`.

    lm-eval keys metrics as `metric,filter` (`acc,none`, `acc_stderr,none`); the filter is dropped
    when it is `none`. A stderr of "N/A" becomes None. `n` (documents scored, summed over a group's
    subtasks) and `num_fewshot` are added beside the metrics.
    """
    entry = (results.get("results") or {}).get(task) or (results.get("groups") or {}).get(task)
    if not isinstance(entry, Mapping):
        got = ", ".join(sorted(results.get("results") or {})) or "nothing"
        raise KnowpackError(f"lm-eval returned no results for task '{task}' (it returned: {got})")
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if key in _NOT_METRICS:
            continue
        metric, _, filt = str(key).partition(",")
        name = metric if filt in ("", "none") else str(key)
        number = _number(value)
        if number is not None or "stderr" in metric:
            out[name] = number
    shots = (results.get("n-shot") or {}).get(task, num_fewshot)
    out["n"] = _n_docs(results, task)
    out["num_fewshot"] = int(shots) if isinstance(shots, int) else num_fewshot
    return out


def primary_metric(scores: Mapping[str, Any]) -> str:
    """The metric reported as a task's accuracy: `acc` where lm-eval gives it."""
    for name in PRIMARY_METRICS:
        if scores.get(name) is not None:
            return name
    for name, value in scores.items():
        if name not in ("n", "num_fewshot") and "stderr" not in name and value is not None:
            return name
    raise KnowpackError(f"lm-eval returned no metric to report (got {sorted(scores)})")


def run_harness(model: Any, tokenizer: Any, tasks: Sequence[str | tuple[str, int | None]] = SUGGESTED_TASKS, *,
                batch_size: int = 8, limit: int | float | None = None, seed: int = DEFAULT_SEED,
                ) -> dict[str, dict[str, Any]]:
    """Score `model` on lm-eval `tasks`; returns `{task: {metric: value, ..., "n": docs, "num_fewshot": k}}`.

    `limit` caps the documents per task (lm-eval's `limit`; a float < 1 is a share), for quick
    looks only: MMLU's groups then score the first documents of every subject.
    """
    parsed = [parse_task(t) for t in tasks]
    if not parsed:
        return {}
    lm_eval, HFLM = require_lm_eval()
    manager = _task_manager()
    if manager is not None:
        _check_names([name for name, _ in parsed], manager)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    accepted = inspect.signature(lm_eval.simple_evaluate).parameters
    optional = {"random_seed": seed, "numpy_random_seed": seed, "torch_random_seed": seed,
                "fewshot_random_seed": seed, "task_manager": manager}
    extra = {k: v for k, v in optional.items() if k in accepted and v is not None}
    out: dict[str, dict[str, Any]] = {}
    for name, shots in parsed:
        log.info("lm-eval: %s (%s-shot%s)", name, "default" if shots is None else shots,
                 f", limit {limit}" if limit else "")
        try:
            results = lm_eval.simple_evaluate(model=lm, tasks=[name], num_fewshot=shots, limit=limit,
                                              log_samples=False, **extra)
        except KnowpackError:
            raise
        except Exception as exc:  # only data-loading failures become a message; anything else is a bug
            if _is_data_error(exc):
                raise _data_error(name, exc) from exc
            raise
        if not results:
            raise KnowpackError(f"lm-eval returned no results for task '{name}' (not the main process?)")
        out[name] = parse_results(results, name, shots)
    return out
