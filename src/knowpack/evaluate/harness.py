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

knowpack ships lm-eval tasks of its own in `data/lm_eval_tasks/`: `world_mc`, the embedded world's MC
benchmark (`eval.harness=[world_mc]`). Their `data_files` are relative to the world directory. lm-eval
would read a relative path against the working directory, and the package can be installed anywhere,
so each `run_harness` call writes the task configs it needs, with absolute paths into the world in use
(`knowpack.runs.world_dir()` unless `world_dir` is given), into a fresh temporary directory that is
lm-eval's `include_path` for that call and is removed afterwards: nothing stale is left to find, and
nothing is downloaded (the `json` builder of `datasets` is local; HF_DATASETS_OFFLINE=1 is fine).

`world_mc` through lm-eval and `eval.mc` with `mc_scoring=continuation` score the same thing: both
encode the context with the tokenizer's own special tokens (HFLM's `add_bos_token=None`, knowpack's
`special_tokens_for`), take the continuation's tokens as those of context + continuation past the
context's, and move trailing spaces of the context into the continuation, so no HFLM setting is needed
to align them (tests/test_harness.py checks log-likelihoods and predictions item by item). They would
part only where a token merged across the boundary (knowpack then scores the continuation alone) or a
context ended in other whitespace (lm-eval moves any, knowpack spaces only); "Answer:" + " {choice}"
does neither. Their length-normalised accuracies differ by definition: lm-eval's `acc_norm` divides
by the length of the choice, knowpack's `accuracy_norm` by the length of " {choice}".

lm-eval logs at WARNING unless the `lm_eval` logger was given a level; its warnings that only describe
how knowpack calls it (a model object instead of a name; shots set explicitly, once per MMLU subject)
are dropped there. `progress=False` silences the progress bars of lm-eval and `datasets`.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import inspect
import logging
import numbers
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

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
#: lm-eval task configs shipped with knowpack, one `<task>.yaml` each
TASKS_DIR = Path(__file__).resolve().parent.parent / "data" / "lm_eval_tasks"
#: lm-eval warnings that describe knowpack's way of calling it, not the user's setup
_EXPECTED_WARNINGS = ("`pretrained` model kwarg is not of type `str`",
                      "Passed an already-initialized model through `pretrained`",
                      "Overwriting default num_fewshot")
#: lm-eval modules whose progress bars `progress=False` turns off (requests, tokenising, scoring)
_BAR_MODULES = ("lm_eval.api.task", "lm_eval.api.model", "lm_eval.models.huggingface")


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


def local_tasks() -> dict[str, Path]:
    """knowpack's own lm-eval tasks: `{task name: its config in data/lm_eval_tasks}`."""
    return {p.stem: p for p in sorted(TASKS_DIR.glob("*.yaml"))}


def _absolute(files: Any, root: Path) -> Any:
    if isinstance(files, str):
        return files if Path(files).is_absolute() else str((root / files).resolve())
    if isinstance(files, list):
        return [_absolute(f, root) for f in files]
    if isinstance(files, dict):
        return {k: _absolute(v, root) for k, v in files.items()}
    return files


def write_local_tasks(names: Sequence[str], dest: Path, world_dir: Path | None = None) -> list[Path]:
    """Write knowpack's task configs `names` into `dest` (an lm-eval include path), their relative
    `data_files` made absolute against `world_dir` (default: the embedded world)."""
    import yaml

    shipped = local_tasks()
    unknown = [n for n in names if n not in shipped]
    if unknown:
        raise KnowpackError(f"knowpack ships no lm-eval task {', '.join(map(repr, unknown))}; "
                            f"it ships {', '.join(shipped) or 'none'}")
    if world_dir is None and names:
        from knowpack.runs import world_dir as embedded_world  # lazily: runs imports the whole stage

        world_dir = embedded_world()
    written = []
    for name in names:
        cfg = yaml.safe_load(shipped[name].read_text(encoding="utf-8"))
        kwargs = cfg.get("dataset_kwargs") or {}
        if "data_files" in kwargs:
            kwargs["data_files"] = _absolute(kwargs["data_files"], Path(world_dir))
            files = kwargs["data_files"]
            paths = files.values() if isinstance(files, dict) else files if isinstance(files, list) else [files]
            missing = [str(f) for f in paths if isinstance(f, str) and not Path(f).exists()]
            if missing:
                raise KnowpackError(f"lm-eval task '{name}' reads {', '.join(missing)}, which does not exist; "
                                    f"build the world there with `knowpack world build --out {world_dir}`, "
                                    f"{OFF_HINT}")
        path = Path(dest) / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
        written.append(path)
    return written


def _task_manager(include_path: Path | None = None, include_defaults: bool = True) -> Any:
    """lm-eval's task index for the tasks of a call. Indexing lm-eval's own thousands of tasks takes
    seconds, so a call that asks only for knowpack's tasks leaves them out, and the index of lm-eval's
    tasks alone is built once per process (before and after training ask for the same one)."""
    from lm_eval.tasks import TaskManager

    if include_path is None:
        return _default_task_manager(TaskManager)
    return TaskManager(include_path=str(include_path), include_defaults=include_defaults)


@functools.lru_cache(maxsize=2)
def _default_task_manager(cls: Any) -> Any:
    return cls()


class _DropExpected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and str(record.msg).startswith(_EXPECTED_WARNINGS))


@contextlib.contextmanager
def _lm_eval_logging() -> Iterator[None]:
    """lm-eval's logger at WARNING unless it was given a level, and then without the warnings that only
    describe knowpack's way of calling it; put back afterwards."""
    root = logging.getLogger("lm_eval")
    level = root.level
    if level == logging.NOTSET:
        root.setLevel(logging.WARNING)
    drop, filtered = _DropExpected(), []
    if root.getEffectiveLevel() >= logging.WARNING:  # a user who asked for more sees everything
        for name in ("lm_eval.models.huggingface", "lm_eval.evaluator"):  # filters do not reach child loggers
            filtered.append(logging.getLogger(name))
            filtered[-1].addFilter(drop)
    try:
        yield
    finally:
        root.setLevel(level)
        for logger in filtered:
            logger.removeFilter(drop)


def _quiet_bar(bar: Any) -> Any:
    def quiet(*args: Any, **kwargs: Any) -> Any:
        kwargs["disable"] = True  # wins over the `disable=` lm-eval passes, as a functools.partial's would not
        return bar(*args, **kwargs)
    return quiet


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """No progress bars from lm-eval or `datasets` while scoring. lm-eval has no switch for them (its
    `disable_tqdm` does not reach `simple_evaluate`), so the `tqdm` its modules call is swapped for
    a disabled one and put back afterwards; `datasets` has its own switch."""
    bars: list[tuple[Any, Any]] = []
    for name in _BAR_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if callable(getattr(module, "tqdm", None)):
            bars.append((module, module.tqdm))
            module.tqdm = _quiet_bar(module.tqdm)
    switch = None
    if "HF_DATASETS_DISABLE_PROGRESS_BARS" not in os.environ:  # the variable has priority in datasets
        try:
            import datasets.utils as switch
        except ImportError:
            pass
        if switch is not None and not switch.are_progress_bars_disabled():
            switch.disable_progress_bars()
        else:
            switch = None
    try:
        yield
    finally:
        for module, bar in bars:
            module.tqdm = bar
        if switch is not None:
            switch.enable_progress_bars()


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
                progress: bool = True, world_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """Score `model` on lm-eval `tasks`; returns `{task: {metric: value, ..., "n": docs, "num_fewshot": k}}`.

    `limit` caps the documents per task (lm-eval's `limit`; a float < 1 is a share), for quick
    looks only: MMLU's groups then score the first documents of every subject. knowpack's own
    tasks (`local_tasks()`, e.g. `world_mc`) read their data from `world_dir`, by default the
    embedded world.
    """
    parsed = [parse_task(t) for t in tasks]
    if not parsed:
        return {}
    lm_eval, HFLM = require_lm_eval()
    names = [name for name, _ in parsed]
    ours = [n for n in names if n in local_tasks()]
    with contextlib.ExitStack() as stack:
        include = stack.enter_context(tempfile.TemporaryDirectory(prefix="knowpack-lm-eval-"))
        stack.enter_context(_lm_eval_logging())
        if not progress:
            stack.enter_context(_no_progress_bars())
        if ours:
            write_local_tasks(ours, Path(include), world_dir)
        manager = _task_manager(Path(include) if ours else None, include_defaults=len(ours) < len(names))
        _check_names(names, manager)
        training = getattr(model, "training", None)
        try:
            return _evaluate(lm_eval, HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size), parsed,
                             manager, limit=limit, seed=seed)
        finally:
            if training:  # HFLM switches the model to eval mode; a model in training goes back to it
                model.train()


def _evaluate(lm_eval: Any, lm: Any, parsed: list[tuple[str, int | None]], manager: Any, *,
              limit: int | float | None, seed: int) -> dict[str, dict[str, Any]]:
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
