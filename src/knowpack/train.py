"""The one training loop, shared by every method (LoRA family, full fine-tuning, LoKI).

    result = train(model, tokenizer, rows, settings, out_dir)

The method (from the registry) makes the model trainable; the loop tokenises the composed rows,
runs AdamW with a linear schedule, checkpoints atomically (resumable to the same final weights),
calls an optional evaluation hook for early stopping, and saves the adapter. It runs unchanged
under `accelerate launch`: each global batch is split across processes, gradients are averaged by
DDP, and only rank zero logs, shows progress and writes files.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch

from knowpack.errors import KnowpackError
from knowpack.io import append_jsonl, read_jsonl, write_json, write_jsonl
from knowpack.methods import count_trainable, get_method, method_names
from knowpack.methods.loki.method import LokiSettings
from knowpack.methods.peft_methods import LoraSettings

log = logging.getLogger(__name__)

IGNORE = -100
#: Written into the adapter directory last: the adapter beside it is complete (see `finished_training`).
TRAINING_RECORD = "training.json"


@dataclass
class EarlyStopSettings:
    """Stop when the trained facts are learned, or when known facts start to be forgotten."""

    enabled: bool = False
    reliability: float = field(default=1.0, metadata={"min": 0, "max": 1,
                                                      "help": "stop once this share of trained facts is answered"})
    max_retention_drop: float = field(default=0.1, metadata={
        "min": 0, "max": 1, "help": "stop when accuracy on held-out known facts drops this much below its start"})
    every: int = field(default=1, metadata={"min": 1, "help": "epochs between checks"})


@dataclass
class TrainSettings:
    method: str = field(default="lora", metadata={"choices": method_names})
    lr: float | None = field(default=None, metadata={"min": 0, "help": "None: the method's default"})
    epochs: int = field(default=10, metadata={"min": 0, "help": "passes over the training set; 0 trains nothing (the base model evaluated as a run: every shift 0)"})
    max_steps: int | None = field(default=None, metadata={
        "min": 0, "help": "stop after this many optimizer steps even if epochs remain (the schedule spans the "
                          "smaller of the two); null: epochs x steps per epoch"})
    batch_size: int = field(default=16, metadata={"min": 1})
    schedule: Literal["linear", "constant", "cosine"] = "linear"
    warmup_ratio: float = field(default=0.0, metadata={"min": 0, "max": 1})
    weight_decay: float = field(default=0.0, metadata={"min": 0})
    max_grad_norm: float = field(default=0.0, metadata={"min": 0, "help": "0 turns clipping off"})
    loss_on: Literal["all", "answer"] = field(default="all", metadata={"help": "tokens that carry the loss"})
    seed: int = 0
    checkpoint_every: int = field(default=0, metadata={
        "min": 0, "help": "steps between checkpoints; 0: at the end of an epoch once checkpoint_seconds have passed"})
    checkpoint_seconds: float = field(default=30.0, metadata={
        "min": 0, "help": "with checkpoint_every 0: least time between checkpoints (one process; with several, "
                          "every epoch), so short epochs do not spend their time writing checkpoints"})
    lora: LoraSettings = field(default_factory=LoraSettings)
    loki: LokiSettings = field(default_factory=LokiSettings)
    early_stopping: EarlyStopSettings = field(default_factory=EarlyStopSettings)


@dataclass
class TrainResult:
    model: torch.nn.Module
    steps: int
    epochs: float
    trainable_params: int
    stopped_early: str | None
    seconds: float
    log: list[dict[str, Any]]


EvalHook = Callable[[torch.nn.Module], dict[str, float]]


# --- data ----------------------------------------------------------------------------------


def tokenize_rows(rows: Sequence[dict[str, Any]], tokenizer: Any, loss_on: str) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per row; the prompt is tokenised exactly as at inference time."""
    out = []
    for row in rows:
        p_ids = tokenizer(row["prompt"], add_special_tokens=row.get("add_special_tokens", True))["input_ids"]
        c_ids = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        ids = list(p_ids) + list(c_ids)
        labels = ([IGNORE] * len(p_ids) if loss_on == "answer" else list(p_ids)) + list(c_ids)
        out.append((ids, labels))
    return out


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (x, y) in enumerate(examples):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def lr_lambda(schedule: str, total: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


# --- checkpoints ---------------------------------------------------------------------------


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _sync(path: Path) -> None:
    """fsync a log written without syncing, so a checkpoint never gets ahead of its log."""
    if path.exists():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())


def save_checkpoint(ckpt_dir: Path, model, optimizer, scheduler, step: int, fingerprint: str) -> None:
    from safetensors.torch import save_file

    tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_trainable_state(model), str(tmp / "trainable.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(), "step": step}, tmp / "state.pt")
    write_json(tmp / "checkpoint.json", {"step": step, "fingerprint": fingerprint})
    old = ckpt_dir.with_name(ckpt_dir.name + ".old")
    if ckpt_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        ckpt_dir.rename(old)
    tmp.rename(ckpt_dir)
    shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(ckpt_dir: Path, fingerprint: str) -> Path | None:
    """The newest complete checkpoint for this set-up: `checkpoint/`, or what a kill inside
    `save_checkpoint` left (`checkpoint.tmp/` is complete once its checkpoint.json exists, which is
    written last; `checkpoint.old/` is the previous one, renamed)."""
    import json

    best: tuple[int, Path] | None = None
    for d in (ckpt_dir, ckpt_dir.with_name(ckpt_dir.name + ".tmp"), ckpt_dir.with_name(ckpt_dir.name + ".old")):
        try:
            meta = json.loads((d / "checkpoint.json").read_text())
        except (OSError, ValueError):
            continue
        if meta.get("fingerprint") == fingerprint and (best is None or int(meta.get("step", 0)) > best[0]):
            best = (int(meta.get("step", 0)), d)
    return best[1] if best else (ckpt_dir if ckpt_dir.exists() else None)


def _promote_checkpoint(ckpt_dir: Path, fingerprint: str) -> None:
    """Finish what a killed `save_checkpoint` started: the newest complete checkpoint becomes
    `checkpoint/`, so the next save (which clears checkpoint.tmp) cannot delete it."""
    found = latest_checkpoint(ckpt_dir, fingerprint)
    if found is None or found == ckpt_dir:
        return
    old = ckpt_dir.with_name(ckpt_dir.name + ".old")
    if found != old and ckpt_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        ckpt_dir.rename(old)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    found.rename(ckpt_dir)


def finished_training(out_dir: Path, fingerprint: str) -> tuple[Path, dict[str, Any]] | None:
    """(adapter directory, training record) of a training that finished for this set-up, or None.

    The record (`training.json`) is written into `adapter.tmp/` after the adapter, and the directory
    is then renamed to `adapter/`, so a record means a complete adapter; a kill between removing an
    old `adapter/` and the rename leaves the finished one in `adapter.tmp/`.
    """
    import json

    if not fingerprint:
        return None
    for d in (out_dir / "adapter", out_dir / "adapter.tmp"):
        try:
            record = json.loads((d / TRAINING_RECORD).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("fingerprint") == fingerprint:
            return d, record
    return None


def load_checkpoint(ckpt_dir: Path, model, optimizer, scheduler, fingerprint: str) -> int | None:
    """Restore a checkpoint written for the same training set-up; return its step, or None."""
    from safetensors.torch import load_file

    meta_path = ckpt_dir / "checkpoint.json"
    if not meta_path.exists():
        return None
    import json

    meta = json.loads(meta_path.read_text())
    if meta.get("fingerprint") != fingerprint:
        log.warning("ignoring checkpoint in %s: it was written for other settings or data", ckpt_dir)
        return None
    weights = load_file(str(ckpt_dir / "trainable.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    state = torch.load(ckpt_dir / "state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return int(state["step"])


# --- the loop ------------------------------------------------------------------------------


def train(model: torch.nn.Module, tokenizer: Any, rows: Sequence[dict[str, Any]], settings: TrainSettings,
          out_dir: str | Path, *, base_model: str = "", method_context: dict[str, Any] | None = None,
          eval_hook: EvalHook | None = None, fingerprint: str = "", resume: bool = True,
          progress: bool = True, max_steps: int | None = None) -> TrainResult:
    """Train `model` on the composed `rows` and save the adapter to `out_dir/adapter`.

    `fingerprint` identifies the set-up (config, data, base model); a checkpoint is resumed only
    when it matches. `max_steps` stops early after that many optimizer steps (used to test resume).
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    if not rows:
        raise KnowpackError("the training set is empty; check compose.n_unknown and the probe")
    out_dir = Path(out_dir)
    method = get_method(settings.method)
    acc = Accelerator(cpu=next(model.parameters()).device.type == "cpu")
    done = finished_training(out_dir, fingerprint) if resume else None
    if done is not None:
        return _load_finished(model, method, out_dir, done, acc)
    torch.manual_seed(settings.seed)
    method_settings = getattr(settings, method.settings_key) if method.settings_key else None
    model = method.prepare(model, method_settings, **(method_context or {}))
    n_trainable = count_trainable(model)
    if n_trainable == 0:
        raise KnowpackError(f"method '{settings.method}' left no trainable parameters")
    lr = settings.lr if settings.lr is not None else method.default_lr
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=settings.weight_decay)

    data = tokenize_rows(rows, tokenizer, settings.loss_on)
    steps_per_epoch = math.ceil(len(data) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    if settings.max_steps is not None:
        total = min(total, settings.max_steps)
    warmup = int(settings.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(settings.schedule, total, warmup))

    ckpt_dir = out_dir / "checkpoint"
    log_path = out_dir / "train_log.jsonl"
    start = 0
    found = None
    if resume:
        if acc.is_main_process:
            _promote_checkpoint(ckpt_dir, fingerprint)
        acc.wait_for_everyone()  # every process reads the checkpoint after rank zero settled it
        found = latest_checkpoint(ckpt_dir, fingerprint)
    if found is not None:
        start = load_checkpoint(found, model, optimizer, scheduler, fingerprint) or 0
        if start:
            log.info("resuming from step %d of %d", start, total)
    history = [r for r in (read_jsonl(log_path, drop_torn_tail=True) if (start and log_path.exists()) else [])
               if r.get("step", 0) <= start]
    if acc.is_main_process:
        write_jsonl(log_path, history)

    model, optimizer = acc.prepare(model, optimizer)
    model.train()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ckpt_every = settings.checkpoint_every or steps_per_epoch
    # Throttled by time only in one process: several processes must agree on every checkpoint.
    ckpt_wait = settings.checkpoint_seconds if not settings.checkpoint_every and acc.num_processes == 1 else 0.0
    last_ckpt = time.perf_counter()
    stopped: str | None = None
    t0 = time.perf_counter()
    bar = tqdm(total=total, initial=start, desc=f"train {settings.method}", unit="step",
               disable=not progress or not acc.is_main_process, dynamic_ncols=True)
    step = start
    if start and start % steps_per_epoch == 0 and start < total and settings.early_stopping.enabled:
        # Resumed from an epoch's last checkpoint, which is written before that epoch's early-stopping
        # check: make the check again (same weights, same answer) rather than skip it.
        history = [r for r in history if not ("eval" in r and r.get("step") == start)]
        if acc.is_main_process:
            write_jsonl(log_path, history)
        stopped = _early_stop_check(settings.early_stopping, eval_hook, acc.unwrap_model(model),
                                    start // steps_per_epoch, history, log_path, acc.is_main_process)
    while step < total and stopped is None:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        order = epoch_order(len(data), settings.seed, epoch)
        for b in range(in_epoch, steps_per_epoch):
            idx = order[b * settings.batch_size:(b + 1) * settings.batch_size]
            mine = idx[acc.process_index::acc.num_processes] or idx[:1]
            batch = {k: v.to(acc.device) for k, v in collate([data[i] for i in mine], pad_id).items()}
            loss = model(**batch).loss
            acc.backward(loss)
            if settings.max_grad_norm:
                acc.clip_grad_norm_(params, settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_value = float(acc.reduce(loss.detach(), reduction="mean"))
            record = {"step": step, "epoch": round(step / steps_per_epoch, 4), "loss": loss_value,
                      "lr": scheduler.get_last_lr()[0]}
            history.append(record)
            if acc.is_main_process:
                # Not fsynced per step (a torn last line is dropped on reading); checkpoints sync it.
                append_jsonl(log_path, record, sync=False)
            bar.set_postfix(loss=f"{loss_value:.4f}", epoch=f"{step / steps_per_epoch:.1f}")
            bar.update(1)
            if step % ckpt_every == 0 and step < total and time.perf_counter() - last_ckpt >= ckpt_wait:
                acc.wait_for_everyone()
                if acc.is_main_process:
                    _sync(log_path)
                    save_checkpoint(ckpt_dir, acc.unwrap_model(model), optimizer, scheduler, step, fingerprint)
                last_ckpt = time.perf_counter()
            if max_steps is not None and step >= max_steps:
                stopped = "max_steps"
                break
            if step >= total:  # train.max_steps ends the run inside an epoch
                break
        else:
            stopped = _early_stop_check(settings.early_stopping, eval_hook, acc.unwrap_model(model),
                                        step // steps_per_epoch, history, log_path, acc.is_main_process)
    bar.close()
    model = acc.unwrap_model(model)
    model.eval()
    acc.wait_for_everyone()
    if acc.is_main_process and stopped != "max_steps":
        adapter = out_dir / "adapter"
        tmp = out_dir / "adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        _sync(log_path)  # the finished adapter never gets ahead of its log
        method.save(model, tmp, base_model=base_model)
        write_json(tmp / TRAINING_RECORD, {"fingerprint": fingerprint, "method": settings.method, "steps": step,
                                           "epochs": step / steps_per_epoch, "trainable_params": n_trainable,
                                           "stopped_early": stopped, "seconds": time.perf_counter() - t0})
        shutil.rmtree(adapter, ignore_errors=True)
        tmp.rename(adapter)
        for d in ("", ".tmp", ".old"):
            shutil.rmtree(ckpt_dir.with_name(ckpt_dir.name + d), ignore_errors=True)
    return TrainResult(model, step, step / steps_per_epoch, n_trainable,
                       None if stopped == "max_steps" else stopped, time.perf_counter() - t0, history)


def _load_finished(model: torch.nn.Module, method: Any, out_dir: Path, done: tuple[Path, dict[str, Any]],
                   acc: Any) -> TrainResult:
    """The result of a training that finished before the process was stopped: its adapter, loaded."""
    where, record = done
    adapter = out_dir / "adapter"
    if acc.is_main_process:
        if where != adapter:  # killed between removing the old adapter/ and renaming adapter.tmp/
            shutil.rmtree(adapter, ignore_errors=True)
            where.rename(adapter)
        for d in ("checkpoint", "checkpoint.tmp", "checkpoint.old"):
            shutil.rmtree(out_dir / d, ignore_errors=True)
    acc.wait_for_everyone()
    log.info("training already finished in %s (step %s); loading its adapter", adapter, record.get("steps"))
    trained = method.load(model, adapter)
    trained.eval()
    log_path = out_dir / "train_log.jsonl"
    history = read_jsonl(log_path, drop_torn_tail=True) if log_path.exists() else []
    steps = int(record.get("steps", 0))
    return TrainResult(trained, steps, float(record.get("epochs", 0.0)), int(record.get("trainable_params", 0)),
                       record.get("stopped_early"), float(record.get("seconds", 0.0)), history)


def _early_stop_check(cfg: EarlyStopSettings, hook: EvalHook | None, model, epoch: int,
                      history: list[dict[str, Any]], log_path: Path, main: bool) -> str | None:
    if not cfg.enabled or hook is None or epoch % cfg.every:
        return None
    was_training = model.training
    model.eval()
    metrics = hook(model)
    model.train(was_training)
    record = {"step": history[-1]["step"] if history else 0, "epoch": epoch, "eval": metrics}
    history.append(record)
    if main:
        append_jsonl(log_path, record)
    if metrics.get("reliability", 0.0) >= cfg.reliability:
        log.info("early stop at epoch %d: reliability %.3f >= %.3f", epoch, metrics["reliability"], cfg.reliability)
        return f"reliability {metrics['reliability']:.3f} >= {cfg.reliability}"
    retention = metrics.get("retention")
    # The hook reports the base model's retention as `retention_start`; else the first check is the baseline.
    start = metrics.get("retention_start",
                        next((r["eval"].get("retention") for r in history if "eval" in r), None))
    if retention is not None and start is not None and start - retention > cfg.max_retention_drop:
        log.info("early stop at epoch %d: retention fell from %.3f to %.3f", epoch, start, retention)
        return f"retention fell from {start:.3f} to {retention:.3f}"
    return None
