"""Knowledge Vector Attribution (KVA, SPEC §5.1): integrated gradients on every FFN knowledge vector.

For a prompt, t is the model's own argmax next token and F the softmax probability of t at the last
position. For every layer l, z_l is "the down_proj output at the last position": the output of
`layers[l].mlp.down_proj` (which is the MLP's output) at the last token, *before* it is added to the
residual stream. With that output replaced by α·z_l and everything downstream recomputed,

    Attr_l = z_l ⊙ (1/m) Σ_{k<m} ∂F/∂z |_{α = k/m}          (left Riemann sum, baseline 0)

so Attr has one signed score per row of `down_proj.weight` ([D, d_ff]) per layer.

Two implementations that agree to float noise:
- `reference`: per layer, m copies of the whole prompt, a hook replacing the last-position output,
  one forward and backward (the published algorithm, kept as the yardstick).
- `fast` (default): attention is causal, so the replacement at the last position changes nothing at
  earlier positions. The prefix runs once without grad into a KV cache; then only the last token
  runs, for all L·m (layer, α) rows at once and one backward. A row replacing layer l is clean below
  l, so it joins the batch at layer l with output h_mid_l + α·z_l (h_mid_l: the clean residual
  stream after attention); each layer runs only on rows already perturbed below it. A prompt's
  rows sit side by side on the query axis (all at the last position, a mask letting each see the
  prefix and its own key), so the prefix cache is shared, never copied per row.

    scores = attribute(model, tokenizer, prompts)                     # float32 [N, L, D]
    save_scores("scores.safetensors", scores, ids, {"model": name})
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from knowpack import __version__
from knowpack.errors import InputError, KnowpackError
from knowpack.io import write_bytes
from knowpack.methods.loki import arch
from knowpack.models import encode_text, with_cache
from knowpack.probe.engine import prefill_kv

log = logging.getLogger(__name__)

METHODS = ("fast", "reference")
DEFAULT_STEPS = 7
DEFAULT_BATCH_PROMPTS = 4  # on an accelerator (see `default_batch_prompts`)
CPU_BATCH_PROMPTS = 16


def default_batch_prompts(model: torch.nn.Module) -> int:
    """Prompts per batched pass of the fast path when none is given: 16 on a CPU, 4 on an accelerator.

    On a CPU most of a small group's time is per-call overhead of the last-token passes (2-core
    CPU, 150-token prompts, 8-layer hidden-256 Llama: 63.6 ms per prompt in groups of 4, 45.4 in
    groups of 8, 39.0 in groups of 16, 34.5 in groups of 32; the world model gains alike), and a
    group's memory is small there. On an accelerator a group's activations for the L*m rows and
    their [L*m, vocab] logits grow with the model (about 0.5 GB per 150-token prompt for an 8B
    model), so the default stays at 4 prompts; pass more where memory allows.
    """
    return CPU_BATCH_PROMPTS if _device(model).type == "cpu" else DEFAULT_BATCH_PROMPTS

# The MMLU prompt has one home, shared with the benchmark scorer.
from knowpack.evaluate.mc import LETTERS as ANSWER_LETTERS  # noqa: E402
from knowpack.evaluate.mc import MMLU_TEMPLATE, format_mmlu  # noqa: E402,F401


def _check_str(row: dict, key: str, where: dict, *, required: bool = True) -> str | None:
    if key not in row:
        if required:
            raise InputError(f"missing field '{key}'", field=key, **where)
        return None
    value = row[key]
    if not isinstance(value, str):
        raise InputError(f"'{key}' must be a string, got {type(value).__name__}", field=key, **where)
    if not value.strip():
        raise InputError(f"'{key}' is empty", field=key, **where)
    return value


def _row_id(row: dict, where: dict, *, required: bool) -> str | None:
    if "id" not in row:
        if required:
            raise InputError("missing field 'id'", field="id", **where)
        return None
    value = row["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, str) and not value):
        raise InputError("'id' must be a non-empty string or an integer", field="id", **where)
    return str(value)


def _mmlu_prompt(row: dict, where: dict, tokenizer: Any) -> str:
    question = _check_str(row, "question", where)
    subject = _check_str(row, "subject", where)
    choices = row.get("choices")
    if "choices" not in row:
        raise InputError("missing field 'choices'", field="choices", **where)
    if not isinstance(choices, list) or len(choices) != 4 or not all(isinstance(c, str) for c in choices):
        raise InputError("'choices' must be a list of exactly 4 strings", field="choices", **where)
    if "answer" not in row:
        raise InputError("missing field 'answer'", field="answer", **where)
    answer = row["answer"]
    ok = (isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer <= 3) or \
        (isinstance(answer, str) and answer in ANSWER_LETTERS)
    if not ok:
        raise InputError(f"'answer' must be 0-3 or one of {', '.join(ANSWER_LETTERS)}, got {answer!r}",
                         field="answer", **where)
    return format_mmlu(question, choices, subject, tokenizer)


def load_attribution_prompts(path: str | Path, tokenizer: Any = None) -> tuple[list[str], list[str]]:
    """Read attribution prompts from JSONL; returns (ids, prompts).

    Each row is either `{"id", "prompt"}` (the prompt is used verbatim) or an MMLU-format row
    `{"question", "choices": [4], "answer", "subject"}` (optional `id`, default `line-N`), formatted
    with `format_mmlu` (chat template applied when `tokenizer` has one). Bad rows raise InputError
    naming the file, line and field.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("attribution prompt file not found", path=str(path))
    ids: list[str] = []
    prompts: list[str] = []
    seen: dict[str, int] = {}
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = {"path": str(path), "line": lineno}
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"invalid UTF-8 ({exc.reason})", **where) from None
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(f"invalid JSON: {exc.msg} (column {exc.colno})", **where) from None
            if not isinstance(row, dict):
                raise InputError(f"each line must be a JSON object, got {type(row).__name__}", **where)
            if "prompt" in row:
                row_id = _row_id(row, where, required=True)
                prompt = _check_str(row, "prompt", where)
            elif "question" in row:
                row_id = _row_id(row, where, required=False) or f"line-{lineno}"
                prompt = _mmlu_prompt(row, where, tokenizer)
            else:
                raise InputError("a row needs either 'id' and 'prompt', or the MMLU fields 'question', "
                                 "'choices', 'answer', 'subject'", field="prompt", **where)
            if row_id in seen:
                raise InputError(f"duplicate id '{row_id}' (first on line {seen[row_id]})", field="id", **where)
            seen[row_id] = lineno
            ids.append(row_id)
            prompts.append(prompt)  # type: ignore[arg-type]
    if not prompts:
        raise InputError("no attribution prompts in file (it is empty)", path=str(path))
    return ids, prompts


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids with the tokenizer's default special tokens (BOS if it adds one), text verbatim; a
    prompt that already starts with the BOS text (chat templates write it) gets no second one."""
    ids = encode_text(tokenizer, text)
    if not ids:
        raise KnowpackError(f"attribution prompt {text[:40]!r} tokenises to no tokens")
    return ids


# --- attribution ----------------------------------------------------------------------------

@contextlib.contextmanager
def _attribution_mode(model: torch.nn.Module):
    """Eval mode, no parameter gradients, grad enabled for the activations; all restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    for p, _ in flags:
        p.requires_grad_(False)
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _alphas(steps: int) -> torch.Tensor:
    return torch.arange(steps, dtype=torch.float32) / steps


def _reference_one(model: torch.nn.Module, downs: list[torch.nn.Linear], ids: list[int],
                   steps: int) -> torch.Tensor:
    """The published algorithm for one prompt: per layer, m full-prompt copies, hook, forward, backward."""
    dev = _device(model)
    x = torch.tensor([ids], device=dev)
    zs: list[torch.Tensor] = [None] * len(downs)  # type: ignore[list-item]

    def capture(layer: int):
        def hook(_mod, _inp, out):
            zs[layer] = out[0, -1].detach().clone()
        return hook

    handles = [d.register_forward_hook(capture(i)) for i, d in enumerate(downs)]
    try:
        with torch.no_grad():
            logits = model(input_ids=x, use_cache=False, logits_to_keep=1).logits[0, -1]
    finally:
        for h in handles:
            h.remove()
    target = int(logits.float().argmax())
    alphas = _alphas(steps).to(dev)
    batch = x.expand(steps, -1)
    out = torch.empty(len(downs), zs[0].shape[-1], dtype=torch.float32)
    for layer, down in enumerate(downs):
        z = zs[layer]
        v = (alphas[:, None] * z.float()[None]).to(z.dtype).requires_grad_(True)

        def replace(_mod, _inp, o, v=v):
            return torch.cat([o[:, :-1], v[:, None, :].to(o.dtype)], dim=1)

        handle = down.register_forward_hook(replace)
        try:
            logits = model(input_ids=batch, use_cache=False, logits_to_keep=1).logits[:, -1].float()
        finally:
            handle.remove()
        prob = torch.softmax(logits, dim=-1)[:, target]
        (grad,) = torch.autograd.grad(prob.sum(), v)
        out[layer] = (z.float() * grad.float().mean(0)).cpu()
    return out


class _PrefixCache:
    """Stands in for a transformers Cache in one layer call of the fast path.

    `update` returns the group's cached prefix keys/values followed by the rows' own, and stores
    nothing, so one prefix serves any number of rows. The rows of a prompt sit side by side on the
    query axis, all at the last position; `_row_mask` lets each see the prefix and its own key only.
    """

    def __init__(self, keys: torch.Tensor | None, values: torch.Tensor | None):
        self.keys, self.values = keys, values

    def update(self, key_states, value_states, layer_idx=None, *args, **kwargs):
        if self.keys is None:
            return key_states, value_states
        return torch.cat([self.keys, key_states], dim=2), torch.cat([self.values, value_states], dim=2)


def _cache_kv(cache: Any, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return layers[layer].keys, layers[layer].values
    return cache.key_cache[layer], cache.value_cache[layer]  # transformers < 4.56


def _sliding_window(model: torch.nn.Module) -> int | None:
    window = getattr(getattr(model, "config", None), "sliding_window", None)
    return window if isinstance(window, int) and not isinstance(window, bool) else None


def _prefix_one(model: torch.nn.Module, ids: list[int], num_layers: int) -> list[tuple | None]:
    """Per layer, one prompt's prefix keys/values [1, kv_heads, P, head_dim] (None for P = 0), no grad.

    The model's own forward builds them, so causal and sliding-window masks are its own; a
    sliding-window layer's cache already holds only the keys the last token may see.
    """
    if len(ids) == 1:
        return [None] * num_layers
    with torch.no_grad():
        cache = prefill_kv(arch.decoder_model(model), input_ids=torch.tensor([ids[:-1]], device=_device(model)))
    return [_cache_kv(cache, j) for j in range(num_layers)]


def _key_mask(lengths: list[int], longest: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive [G, P] mask over right-padded prefix keys: 0 for real keys, the dtype's min for padding."""
    mask = torch.zeros(len(lengths), longest, dtype=dtype, device=device)
    for g, n in enumerate(lengths):
        mask[g, n:] = torch.finfo(dtype).min
    return mask


def _stack_layer(kvs: list[tuple | None], dtype: torch.dtype):
    """Right-pad one layer's prefix K/V of a group to a common length; (keys, values, key mask [G, P])."""
    lengths = [0 if kv is None else kv[0].shape[2] for kv in kvs]
    longest = max(lengths)
    if longest == 0:
        return None, None, None
    proto = next(kv for kv in kvs if kv is not None)[0]
    shape = (len(kvs), proto.shape[1], longest, proto.shape[3])
    keys, values = proto.new_zeros(shape), proto.new_zeros(shape)
    for g, kv in enumerate(kvs):
        if kv is not None:
            keys[g, :, : lengths[g]] = kv[0][0]
            values[g, :, : lengths[g]] = kv[1][0]
    return keys, values, _key_mask(lengths, longest, dtype, proto.device)


def _prefix(model: torch.nn.Module, id_lists: list[list[int]], num_layers: int, dtype: torch.dtype) -> list:
    """Per layer (keys [G, kv_heads, P, head_dim], values, key mask [G, P]) for a group, no grad.

    Several prompts run as one right-padded batch (padding only ever follows a prompt's real
    tokens, so those see exactly what they would alone); the padded keys/values are zeroed and
    masked. Sliding-window caches shorter than the padded prefix would drop real tokens, so those
    groups run one prompt at a time.
    """
    lengths = [len(ids) - 1 for ids in id_lists]
    longest = max(lengths)
    window = _sliding_window(model)
    if len(id_lists) == 1 or longest == 0 or (window is not None and longest > window - 1):
        per_prompt = [_prefix_one(model, ids, num_layers) for ids in id_lists]
        return [_stack_layer([p[j] for p in per_prompt], dtype) for j in range(num_layers)]
    dev = _device(model)
    tokens = torch.tensor([ids[:-1] + [ids[0]] * (longest - n) for ids, n in zip(id_lists, lengths)], device=dev)
    # No padding mask: the causal mask alone keeps every real token from the pads that follow it
    # (and lets attention take its causal kernels); the pads' keys and values are zeroed and masked.
    with torch.no_grad():
        cache = prefill_kv(arch.decoder_model(model), input_ids=tokens)
    pad = torch.tensor([[j >= n for j in range(longest)] for n in lengths], device=dev)[:, None, :, None]
    mask = _key_mask(lengths, longest, dtype, dev)
    layers = []
    for j in range(num_layers):
        keys, values = _cache_kv(cache, j)
        layers.append((keys.masked_fill(pad, 0), values.masked_fill(pad, 0), mask))
    return layers


def _row_mask(key_mask: torch.Tensor | None, rows: int, dtype: torch.dtype,
              device: torch.device) -> torch.Tensor | None:
    """Additive [G, 1, R, P + R] mask: every row sees its prompt's real prefix keys and its own key."""
    if rows == 1 and (key_mask is None or not bool((key_mask != 0).any())):
        return None  # one row, nothing padded: no mask (and the fastest kernels)
    own = torch.full((rows, rows), torch.finfo(dtype).min, dtype=dtype, device=device)
    own.fill_diagonal_(0)
    if key_mask is None:
        return own.expand(1, 1, rows, rows)
    groups, longest = key_mask.shape
    return torch.cat([key_mask[:, None, None, :].expand(groups, 1, rows, longest),
                      own.expand(groups, 1, rows, rows)], dim=-1)


def _run_layer(layer, h, prefix, pos, cos_sin, dtype):
    keys, values, key_mask = prefix
    mask = _row_mask(key_mask, h.shape[1], dtype, h.device)
    out = layer(h, attention_mask=mask, position_ids=pos, use_cache=True, position_embeddings=cos_sin,
                **with_cache(layer, _PrefixCache(keys, values)))
    return out[0] if isinstance(out, tuple) else out


def _fast_group(model: torch.nn.Module, parts: arch.DecoderParts, id_lists: list[list[int]],
                steps: int) -> torch.Tensor:
    """Fast KVA for a group of prompts at once; returns float32 [G, L, D] on the CPU.

    Hidden states are [G, R, D]: per prompt, R rows on the query axis, all at the last position.
    Rows of layer j are appended at layer j as m rows (α_0..α_{m-1}) per prompt, so every layer runs
    on the j·m rows perturbed below it and nothing is computed twice.
    """
    dev = _device(model)
    dtype = next(model.parameters()).dtype
    num_layers, m = parts.num_layers, steps
    clock = _Clock(dev)
    prefix = _prefix(model, id_lists, num_layers, dtype)
    clock.lap("prefix")
    last = torch.tensor([[ids[-1]] for ids in id_lists], device=dev)
    pos = torch.tensor([[len(ids) - 1] for ids in id_lists], device=dev)

    # Clean pass of the last token (no grad): targets t, z_l and h_mid_l for every layer.
    zs: list[torch.Tensor] = [None] * num_layers  # type: ignore[list-item]
    mids: list[torch.Tensor] = [None] * num_layers  # type: ignore[list-item]
    handles = []
    for j, layer in enumerate(parts.layers):
        def grab_z(_mod, _inp, out, j=j):
            zs[j] = out[:, -1].detach()

        def grab_mid(_mod, args, j=j):
            mids[j] = args[0][:, -1].detach()

        handles.append(layer.mlp.down_proj.register_forward_hook(grab_z))
        handles.append(layer.post_attention_layernorm.register_forward_pre_hook(grab_mid))
    try:
        with torch.no_grad():
            h = parts.embed(last)
            cos_sin = parts.rotary(h, pos)
            for j, layer in enumerate(parts.layers):
                h = _run_layer(layer, h, prefix[j], pos, cos_sin, dtype)
            logits = parts.lm_head(parts.norm(h))[:, -1].float()
    finally:
        for handle in handles:
            handle.remove()
    targets = logits.argmax(-1)
    clock.lap("clean")

    alphas = _alphas(m).to(dev)
    vs: list[torch.Tensor] = []
    h = None
    for j, layer in enumerate(parts.layers):
        if h is not None:
            rows = h.shape[1]
            row_pos = pos.expand(-1, rows)
            row_cos_sin = tuple(t.expand(-1, rows, -1) for t in cos_sin)
            h = _run_layer(layer, h, prefix[j], row_pos, row_cos_sin, dtype)
        # Rows of layer j: clean below j, output h_mid_j + α_k z_j at layer j.
        v = (alphas[None, :, None] * zs[j].float()[:, None, :]).to(zs[j].dtype).requires_grad_(True)
        vs.append(v)
        new = mids[j][:, None, :] + v
        h = new if h is None else torch.cat([h, new], dim=1)
    logits = parts.lm_head(parts.norm(h)).float()  # [G, L*m, V]
    prob = torch.softmax(logits, dim=-1).gather(2, targets[:, None, None].expand(-1, h.shape[1], 1))
    clock.lap("forward")
    grads = torch.autograd.grad(prob.sum(), vs)
    clock.lap("backward")
    out = torch.empty(len(id_lists), num_layers, zs[0].shape[-1], dtype=torch.float32)
    for j, grad in enumerate(grads):
        out[:, j] = (zs[j].float() * grad.float().mean(1)).cpu()
    clock.lap("scores")
    return out


_PHASES: dict[str, float] | None = None


class _Clock:
    """Adds the seconds between laps to the phase totals of `phase_times`; a no-op otherwise."""

    def __init__(self, device: torch.device):
        self.on = _PHASES is not None
        self.sync = torch.cuda.synchronize if self.on and device.type == "cuda" else (lambda: None)
        self.last = time.perf_counter() if self.on else 0.0

    def lap(self, phase: str) -> None:
        if self.on and _PHASES is not None:
            self.sync()
            now = time.perf_counter()
            _PHASES[phase] = _PHASES.get(phase, 0.0) + now - self.last
            self.last = now


@contextlib.contextmanager
def phase_times():
    """Seconds the fast path spends per phase while the block runs: `prefix` (the prompts' prefix pass),
    `clean` (the last token, unperturbed), `forward` and `backward` (the batched perturbed rows),
    `scores`. Time outside these (grouping, bookkeeping) is what a caller's total has beyond their sum.
    On a GPU each lap synchronises, so it slows the run a little."""
    global _PHASES
    before, _PHASES = _PHASES, {}
    try:
        yield _PHASES
    finally:
        _PHASES = before


@contextlib.contextmanager
def _maskable_attention(model: torch.nn.Module):
    """The fast path passes additive 4D masks, which eager and SDPA attention take; others use SDPA meanwhile."""
    cfg = getattr(model, "config", None)
    impl = getattr(cfg, "_attn_implementation", None)
    if cfg is None or impl in (None, "eager", "sdpa"):
        yield
        return
    log.info("fast KVA: attention '%s' does not take custom masks; using 'sdpa' for attribution", impl)
    cfg._attn_implementation = "sdpa"
    try:
        yield
    finally:
        cfg._attn_implementation = impl


def attribute_ids(model: torch.nn.Module, token_ids: Sequence[Sequence[int]], *, method: str = "fast",
                  steps: int = DEFAULT_STEPS, batch_prompts: int | None = None,
                  progress: bool = True) -> torch.Tensor:
    """KVA scores for already tokenised prompts: float32 [N, L, D] on the CPU (see `attribute`);
    `batch_prompts` None takes `default_batch_prompts`."""
    if batch_prompts is None:
        batch_prompts = default_batch_prompts(model)
    if method not in METHODS:
        raise KnowpackError(f"unknown KVA method '{method}'; use one of: {', '.join(METHODS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise KnowpackError(f"KVA steps must be a positive integer, got {steps!r}")
    if isinstance(batch_prompts, bool) or not isinstance(batch_prompts, int) or batch_prompts < 1:
        raise KnowpackError(f"batch_prompts must be a positive integer, got {batch_prompts!r}")
    downs = arch.down_projs(model)
    parts = arch.decoder_parts(model) if method == "fast" else None
    num_layers, hidden = len(downs), downs[0].weight.shape[0]
    id_lists = [list(map(int, ids)) for ids in token_ids]
    if any(len(ids) == 0 for ids in id_lists):
        raise KnowpackError("an attribution prompt has no tokens")
    if not id_lists:
        return torch.empty(0, num_layers, hidden, dtype=torch.float32)
    from tqdm.auto import tqdm

    group = batch_prompts if method == "fast" else 1
    # Group prompts of similar length so padding stays small; results go back to input order.
    order = sorted(range(len(id_lists)), key=lambda i: len(id_lists[i])) if group > 1 else \
        list(range(len(id_lists)))
    start = time.perf_counter()
    masks = _maskable_attention(model) if method == "fast" else contextlib.nullcontext()
    bar = tqdm(total=len(id_lists), desc=f"KVA ({method})", unit="prompt", disable=not progress)
    with _attribution_mode(model), masks, bar:
        scores = torch.empty(len(id_lists), num_layers, hidden, dtype=torch.float32)
        for lo in range(0, len(order), group):
            idx = order[lo: lo + group]
            if method == "fast":
                scores[idx] = _fast_group(model, parts, [id_lists[i] for i in idx], steps)
            else:
                scores[idx[0]] = _reference_one(model, downs, id_lists[idx[0]], steps)
            bar.update(len(idx))
    elapsed = time.perf_counter() - start
    log.info("KVA (%s, m=%d): %d prompts, %d layers x %d rows in %.1f s (%.3f s per prompt)", method, steps,
             len(id_lists), num_layers, hidden, elapsed, elapsed / len(id_lists))
    if not torch.isfinite(scores).all():
        log.warning("KVA scores contain non-finite values; check the model's dtype (float32 is safest)")
    return scores


def attribute(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], *, method: str = "fast",
              steps: int = DEFAULT_STEPS, batch_prompts: int | None = None,
              progress: bool = True) -> torch.Tensor:
    """Signed KVA scores, float32 [N, L, D]: prompt × layer × row of `down_proj.weight`.

    Prompts are tokenised verbatim with the tokenizer's default special tokens. Each prompt is
    independent, so any subset can be attributed on its own (e.g. one shard per process) and the
    results concatenated along dim 0. `batch_prompts` prompts (default `default_batch_prompts`) share
    one batched pass in the fast path (padding plus a mask); the reference runs one prompt at a time. Scores are accumulated in
    float32 whatever the model's dtype.
    """
    token_ids = [encode_prompt(tokenizer, p) for p in prompts]
    return attribute_ids(model, token_ids, method=method, steps=steps, batch_prompts=batch_prompts,
                         progress=progress)


def attribute_across_processes(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], *,
                               method: str = "fast", steps: int = DEFAULT_STEPS,
                               batch_prompts: int | None = None, progress: bool = True) -> torch.Tensor:
    """`attribute` split over the processes of an `accelerate launch`: process r takes prompts r, r+W, ...

    Every process returns all N scores in input order (gathered), equal to one process's scores up
    to float noise (prompts are grouped differently). Without a launcher it is plain `attribute`.
    """
    from knowpack import distributed

    world, rank = distributed.world_size(), distributed.rank()
    if world == 1:
        return attribute(model, tokenizer, prompts, method=method, steps=steps, batch_prompts=batch_prompts,
                         progress=progress)
    cpu = _device(model).type == "cpu"
    part = attribute(model, tokenizer, list(prompts)[rank::world], method=method, steps=steps,
                     batch_prompts=batch_prompts, progress=progress and rank == 0)
    return distributed.gather_strided(part, len(prompts), cpu)


# --- score files ----------------------------------------------------------------------------

def save_scores(path: str | Path, scores: torch.Tensor, ids: Sequence[str],
                settings: dict[str, Any] | None = None) -> Path:
    """Write scores [N, L, D] as safetensors (tensor `scores`), ids and settings in its metadata, atomically."""
    from safetensors.torch import save

    if scores.ndim != 3:
        raise KnowpackError(f"scores must have shape [N, L, D], got {tuple(scores.shape)}")
    if len(ids) != scores.shape[0]:
        raise KnowpackError(f"{len(ids)} ids for {scores.shape[0]} score rows")
    settings = dict(settings or {})
    settings.setdefault("knowpack_version", __version__)
    metadata = {
        "ids": json.dumps([str(i) for i in ids], ensure_ascii=False),
        "settings": json.dumps(settings, ensure_ascii=False),
        "knowpack_version": str(settings["knowpack_version"]),
    }
    for key in ("method", "steps", "model"):
        if key in settings:
            metadata[key] = str(settings[key])
    data = save({"scores": scores.detach().to("cpu", torch.float32).contiguous()}, metadata=metadata)
    return write_bytes(path, data)


def load_scores(path: str | Path) -> tuple[torch.Tensor, list[str], dict[str, Any]]:
    """Read a scores file written by `save_scores`: (scores float32 [N, L, D], ids, settings)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError("scores file not found (run `knowpack attribute` first)", path=str(path))
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            if "scores" not in fh.keys():
                raise InputError("no tensor 'scores' in file", path=str(path), field="scores")
            scores = fh.get_tensor("scores")
    except SafetensorError as exc:
        raise InputError(f"not a safetensors file: {exc}", path=str(path)) from None
    try:
        ids = json.loads(metadata["ids"])
        settings = json.loads(metadata.get("settings", "{}"))
    except (KeyError, json.JSONDecodeError) as exc:
        raise InputError(f"metadata lacks valid prompt ids/settings ({exc})", path=str(path),
                         field="ids") from None
    if scores.ndim != 3 or len(ids) != scores.shape[0]:
        raise InputError(f"scores of shape {tuple(scores.shape)} do not match {len(ids)} ids",
                         path=str(path), field="scores")
    return scores.float(), [str(i) for i in ids], settings


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over prompts of max|a - b| / max|b| within that prompt (b is the yardstick); 0 for two zeros."""
    a, b = a.double(), b.double()
    num = (a - b).abs().flatten(1).amax(1)
    den = b.abs().flatten(1).amax(1)
    rel = torch.where(den > 0, num / den.clamp_min(1e-300), torch.where(num > 0, math.inf, 0.0))
    return float(rel.max()) if rel.numel() else 0.0
