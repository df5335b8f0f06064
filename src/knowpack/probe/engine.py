"""Generation backends for probing, and the built-in batched Hugging Face engine.

    from knowpack.probe.engine import HFEngine
    outs = HFEngine(model, tok, batch_size=32).generate(prompts, greedy=True, n_samples=16)

A backend turns prompts into short answers: one greedy answer and/or `n_samples` sampled answers
per prompt, each cut at the end of its line. `HFEngine` does this fast on any Hugging Face causal LM:

* **Batching.** Prompts are sorted by shared prefix and suffix length and run `batch_size` at a time.
* **Shared prefixes.** The distinct few-shot prefixes of a batch run once (left-padded). The
  suffixes follow, right-aligned so every row's last column is a real token, with explicit
  position ids (prefix 0…p-1, suffix p…p+s-1, then onwards) and a mask over the pads, so each row
  sees exactly the positions and tokens it would see alone. Where the architecture is plain causal
  attention (Llama, Mistral, Qwen2/3 without sliding windows) the prefix keys/values stay in one copy
  per prefix and a "cascade" attention function reads them for all its rows, merged with each row's
  own keys in one softmax; otherwise the prefix cache is gathered to every row, giving the layout
  ``[pad… prefix][pad… suffix][generated…]`` with the mask zero over both pad runs.
* **Shared prefill for samples.** Greedy and sampled rows of one prompt reuse its prefill: the cache
  is repeated `1 + n_samples` times after the suffix pass.
* **Early stop.** A row ends at the first token whose text holds the stop string (default newline)
  or at EOS; finished rows are dropped from the batch, and a batch ends when all rows have ended,
  at the latest after `max_new_tokens`.
* **No per-step reallocation.** The cache writes into preallocated buffers (see `BufferedLayer`).

Sampling uses temperature and top-k with **common random numbers**: every sampled token is drawn by
the Gumbel-max rule from noise that is a hash of (seed, the prompt's sample key, sample index,
step, token id), so a prompt's samples depend on nothing else in the call — not on the batch it
lands in, the batch size, the other prompts or whether its greedy answer is generated in the same
pass. An unchanged model re-probed gives identical samples, and a changed model's samples differ
only where its distribution changed. Gumbel-max over the top-k logits draws exactly from the
top-k softmax at the given temperature. `naive_generate` is the slow
reference: one `model.generate` call per prompt, greedy; tests and `bench/probe.py` check the
engine's greedy answers against it.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import logging
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch

from knowpack.models import with_cache
from knowpack.probe.prompts import Prompt

log = logging.getLogger(__name__)

ProgressFn = Callable[[int], None]


@dataclass
class Completions:
    """What a backend returns for one prompt: the greedy answer (None when not asked) and the samples."""

    greedy: str | None
    samples: list[str] = field(default_factory=list)


@runtime_checkable
class GenerationBackend(Protocol):
    """Anything that answers prompts; `HFEngine` is the built-in one (vLLM can be another).

    Greedy and sampled answers are asked in one call so a backend can share each prompt's prefill
    between them. Answers are returned without the stop string and stripped of surrounding spaces.
    """

    def generate(self, prompts: Sequence[Prompt | str], *, greedy: bool = True, n_samples: int = 0,
                 temperature: float = 0.5, top_k: int = 40, max_new_tokens: int = 32, seed: int = 0,
                 stop: str = "\n", progress: ProgressFn | None = None,
                 sample_keys: Sequence[int] | None = None) -> list[Completions]: ...


def check_sampling(n_samples: int, temperature: float, n_prompts: int = 0,
                   sample_keys: Sequence[int] | None = None) -> list[int]:
    """The argument checks every generation backend makes before answering; returns the sample keys
    (one per prompt; by default the prompt's position in the call)."""
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    if n_samples and temperature <= 0:
        raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
    if sample_keys is None:
        return list(range(n_prompts))
    if len(sample_keys) != n_prompts:
        raise ValueError(f"got {len(sample_keys)} sample keys for {n_prompts} prompts; pass one per prompt")
    return [int(k) for k in sample_keys]


# --- common random numbers ------------------------------------------------------------------

_M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def stable_key(text: str) -> int:
    """A 63-bit key for a string that is the same in every process (unlike `hash`)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") >> 1


def stream_key(seed: int, key: int, sample: int) -> int:
    """The random stream of one sampled answer: (seed, prompt key, sample index) mixed into 64 bits,
    as a signed int64 (what a torch tensor holds)."""
    x = _splitmix64(_splitmix64(_splitmix64(seed & _M64) ^ (key & _M64)) ^ (sample & _M64))
    return x - (1 << 64) if x >= 1 << 63 else x


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 tensors holding 32-bit values, without int64 overflow."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xorshift-multiply rounds) on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def gumbel_noise(streams: torch.Tensor, step: int, tokens: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise [R, K] for rows of 64-bit `streams` [R] at `step`, one value per token id
    in `tokens` [R, K]; a pure function of its inputs, on any device."""
    hi, lo = (streams >> 32) & 0xFFFFFFFF, streams & 0xFFFFFFFF
    x = _mix32((tokens.long() & 0xFFFFFFFF) ^ _mul32(torch.full_like(tokens, step + 1, dtype=torch.long),
                                                      0x9E3779B9))
    x = _mix32(x ^ lo[:, None])
    x = _mix32(x ^ hi[:, None])
    u = ((x >> 8).double() + 0.5) / float(1 << 24)  # in (0, 1), 24 bits
    return -torch.log(-torch.log(u))


def as_prompt(p: Prompt | str) -> Prompt:
    """A plain string is a prompt with no shared prefix, tokenized with special tokens."""
    return p if isinstance(p, Prompt) else Prompt("", p)


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every id that ends generation: the tokenizer's EOS and the model's generation-config EOS ids."""
    ids: set[int] = set()
    for source in (getattr(tokenizer, "eos_token_id", None),
                   getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source is not None:
            ids.update(int(i) for i in source)
    return ids


_STOP_CACHE: dict[tuple[int, str], tuple[Any, frozenset[int]]] = {}


def stop_token_ids(tokenizer: Any, stop: str = "\n") -> frozenset[int]:
    """Ids of all tokens whose text contains `stop` (e.g. "\\n", ".\\n", "\\n\\n"); cached per tokenizer.

    A stop string that spans several tokens is not caught here; answers are still cut at it.
    """
    key = (id(tokenizer), stop)
    hit = _STOP_CACHE.get(key)
    if hit is None or hit[0]() is not tokenizer:  # an id can be reused once a tokenizer is freed
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=False)
        hit = _STOP_CACHE[key] = (weakref.ref(tokenizer), frozenset(i for i, t in enumerate(texts) if stop in t))
    return hit[1]


def decode_answer(tokenizer: Any, ids: Sequence[int], stop: str = "\n") -> str:
    """Generated ids to answer text: special tokens dropped, cut at the stop string, stripped."""
    return cut_answer(tokenizer.decode(list(ids), skip_special_tokens=True), stop)


def cut_answer(text: str, stop: str = "\n") -> str:
    """Generated text as an answer, the same for every backend: cut at the stop string, stripped."""
    if stop:
        text = text.split(stop, 1)[0]
    return text.strip()


def _pad_id(model: Any, tokenizer: Any) -> int:
    for v in (getattr(tokenizer, "pad_token_id", None), getattr(model.config, "pad_token_id", None),
              getattr(tokenizer, "eos_token_id", None)):
        if isinstance(v, int):
            return v
    return 0


class Arena:
    """Reusable flat buffers, so the cache is not allocated afresh at every batch and compaction.

    On a CPU, a fresh large tensor costs a page fault per 4 KiB touched; with hundreds of rows that
    cost more than the attention itself. Buffers live for one `generate` call.
    """

    def __init__(self) -> None:
        self._flat: dict[tuple[Any, ...], torch.Tensor] = {}

    def take(self, key: tuple[Any, ...], shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        n = 1
        for d in shape:
            n *= d
        flat = self._flat.get(key)
        if flat is None or flat.numel() < n or flat.dtype != like.dtype or flat.device != like.device:
            flat = self._flat[key] = like.new_empty(max(n, flat.numel() if flat is not None else 0))
        return flat[:n].view(shape)


def _buffered_layer_class():
    from transformers.cache_utils import DynamicLayer

    class BufferedLayer(DynamicLayer):
        """A full-attention cache layer that writes into preallocated buffers.

        `DynamicLayer` concatenates the whole cache at every step, which made copying the cache the
        largest cost of sampling many rows on a CPU; here each step writes one slice, and gathering
        rows (to expand prefixes, repeat prompts for samples, drop finished rows) copies between two
        arena buffers. `keys` and `values` are views of the filled part, as in `DynamicLayer`.
        """

        def __init__(self, index: int, arena: Arena, reserve: int = 0):
            super().__init__()
            self.index, self.arena, self.reserve, self.length, self.slot = index, arena, reserve, 0, 0
            self._k: torch.Tensor | None = None
            self._v: torch.Tensor | None = None

        def lazy_initialization(self, key_states, value_states):
            self.dtype, self.device = key_states.dtype, key_states.device
            self.is_initialized = True

        def _views(self):
            self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]

        def _buffers(self, rows: int, cap: int, slot: int):
            k_shape = (rows, self._k.shape[1] if self._k is not None else self._kh, cap, self._kd)
            v_shape = (rows, k_shape[1], cap, self._vd)
            return (self.arena.take(("k", self.index, slot), k_shape, self._like),
                    self.arena.take(("v", self.index, slot), v_shape, self._like))

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = key_states.shape[-2]
            need = self.length + n
            if self._k is None:
                self._kh, self._kd, self._vd, self._like = key_states.shape[1], key_states.shape[3], \
                    value_states.shape[3], key_states.new_empty(0)
                self._k, self._v = self._buffers(key_states.shape[0], need + self.reserve, self.slot)
            elif need > self._k.shape[2]:  # beyond the reserve: grow (not expected in probing)
                k = key_states.new_empty(*self._k.shape[:2], max(need, 2 * self._k.shape[2]), self._k.shape[3])
                v = value_states.new_empty(*self._v.shape[:2], k.shape[2], self._v.shape[3])
                k[:, :, :self.length], v[:, :, :self.length] = self.keys, self.values
                self._k, self._v = k, v
            self._k[:, :, self.length:need] = key_states
            self._v[:, :, self.length:need] = value_states
            self.length = need
            self._views()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        def batch_select_indices(self, indices):
            if self._k is None:
                return
            indices = indices.to(self._k.device)
            self.slot = 1 - self.slot
            k, v = self._buffers(len(indices), self._k.shape[2], self.slot)
            torch.index_select(self._k, 0, indices, out=k)
            torch.index_select(self._v, 0, indices, out=v)
            self._k, self._v = k, v
            self._views()

        def batch_repeat_interleave(self, repeats: int):
            if self._k is not None:
                rows = torch.arange(self._k.shape[0], device=self._k.device)
                self.batch_select_indices(rows.repeat_interleave(repeats))

        def crop(self, tokens_to_remove: int):
            raise NotImplementedError("the probe engine never crops its cache")

        def reset(self):
            self._k = self._v = self.keys = self.values = None
            self.length, self.is_initialized = 0, False

    return BufferedLayer


_BUFFERED: type | None = None


def new_cache(model: Any, reserve: int, arena: Arena | None = None):
    """A `DynamicCache` for `model` whose full-attention layers write into preallocated buffers.

    Layers of other kinds (sliding window, linear attention) keep their own implementation.
    """
    global _BUFFERED
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    if _BUFFERED is None:
        _BUFFERED = _buffered_layer_class()
    arena = arena if arena is not None else Arena()
    cache = DynamicCache(config=model.config)
    if cache.layers:
        cache.layers = [_BUFFERED(i, arena, reserve) if type(layer) is DynamicLayer else layer
                        for i, layer in enumerate(cache.layers)]
    elif cache.layer_class_to_replicate is DynamicLayer:
        counter = iter(range(1 << 30))
        cache.layer_class_to_replicate = lambda: _BUFFERED(next(counter), arena, reserve)
    return cache


# --- shared-prefix ("cascade") attention ------------------------------------------------------

CASCADE_ATTENTION = "knowpack_cascade"
CASCADE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_STATE: contextvars.ContextVar["_CascadeState | None"] = contextvars.ContextVar("knowpack_cascade", default=None)


def cascade_supported(model: Any) -> bool:
    """Whether `model`'s attention is plain causal softmax attention (no sliding window, soft-cap, sinks)."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in CASCADE_MODEL_TYPES:
        return False
    types = getattr(cfg, "layer_types", None)
    if types is not None:
        return all(t == "full_attention" for t in types)
    return getattr(cfg, "sliding_window", None) is None or getattr(cfg, "use_sliding_window", True) is False


class _CascadeState:
    """The shared prefixes of a batch, kept once, and which prefix each live row reads."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], prefix_mask: torch.Tensor,
                 which: torch.Tensor):
        # float32 once per batch; values at pad positions zeroed so that a zero weight times a
        # non-finite value (a fully padded prefix) cannot leak into the output
        keep = prefix_mask[:, None, :, None]
        self.keys = [k.float() for k in keys]
        self.values = [torch.where(keep, v.float(), 0.0) for v in values]
        self.prefix_mask = prefix_mask
        self.own_mask: torch.Tensor | None = None  # (rows, own length), set before each forward
        self.blocked: torch.Tensor | None = None  # the own-part mask built from it by the first layer
        self.set_rows(which)

    def set_rows(self, which: torch.Tensor) -> None:
        self.which = which
        self.row_mask = self.prefix_mask[which]
        # rows of one prefix are contiguous (batches are sorted by prefix); runs are found anyway
        ids, counts = torch.unique_consecutive(which, return_counts=True)
        ends = counts.cumsum(0).tolist()
        self.groups = [(j, a, b) for j, a, b in zip(ids.tolist(), [0] + ends[:-1], ends)]


def _cascade_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Softmax attention over [shared prefix | own tokens], with the prefix read once per distinct prefix.

    Rows sharing a prefix attend to one copy of its keys and values; the own part (suffix and
    generated tokens) is per row and causal. One softmax spans both, so the result is ordinary
    attention over the row's whole sequence. Returns (batch, q, heads, dim) like HF's sdpa path.
    """
    st = _STATE.get()
    if st is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    rows, heads, q_len, dim = query.shape
    kv_heads, own_len = key.shape[1], key.shape[2]
    group = heads // kv_heads
    gq = group * q_len
    scale = scaling if scaling is not None else dim ** -0.5
    qf = (query.float() * scale).reshape(rows, kv_heads, gq, dim)
    neg = torch.finfo(torch.float32).min

    own = qf @ key.float().transpose(-1, -2)  # rows, kv_heads, gq, own_len
    if st.blocked is None or st.blocked.shape[-2:] != (gq, own_len):  # once per forward, not per layer
        causal = torch.arange(own_len, device=query.device)[None, :] <= \
            torch.arange(own_len - q_len, own_len, device=query.device)[:, None]
        st.blocked = ~(st.own_mask.bool()[:, None, None, :] & causal[None, None]).repeat(1, 1, group, 1)
    own.masked_fill_(st.blocked, neg)

    kp, vp = st.keys[module.layer_idx], st.values[module.layer_idx]
    p_len = kp.shape[2]
    pre = qf.new_empty(rows, kv_heads, gq, p_len)
    for j, a, b in st.groups:
        qj = qf[a:b].transpose(0, 1).reshape(kv_heads, -1, dim)
        pre[a:b] = (qj @ kp[j].transpose(-1, -2)).view(kv_heads, b - a, gq, p_len).transpose(0, 1)
    pre.masked_fill_(~st.row_mask[:, None, None, :], neg)

    probs = torch.softmax(torch.cat([pre, own], dim=-1), dim=-1)
    out = probs[..., p_len:] @ value.float()
    p_pre = probs[..., :p_len]
    for j, a, b in st.groups:
        pj = p_pre[a:b].transpose(0, 1).reshape(kv_heads, -1, p_len)
        out[a:b] += (pj @ vp[j]).view(kv_heads, b - a, gq, -1).transpose(0, 1)
    out = out.view(rows, kv_heads, group, q_len, -1).reshape(rows, heads, q_len, -1)
    return out.transpose(1, 2).to(query.dtype).contiguous(), None


@contextlib.contextmanager
def _cascade(model: Any, state: "_CascadeState | None"):
    """Run `model` with cascade attention over `state` (a no-op when `state` is None)."""
    if state is None:
        yield
        return
    from transformers import AttentionInterface

    if CASCADE_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(CASCADE_ATTENTION, _cascade_attention)
    cfg = model.config
    before = cfg._attn_implementation_internal
    token = _STATE.set(state)
    cfg._attn_implementation_internal = CASCADE_ATTENTION
    try:
        yield
    finally:
        cfg._attn_implementation_internal = before
        _STATE.reset(token)


@dataclass
class _Item:
    index: int  # position in the caller's list
    prefix: tuple[int, ...]
    suffix: list[int]
    key: int = 0  # the prompt's sample key (common random numbers)


class HFEngine:
    """Batched greedy + sampled generation on a Hugging Face causal LM (see the module docstring).

    `batch_size` is the number of prompts per batch; each prompt adds `greedy + n_samples` rows.
    `cascade` (default: where the architecture allows) keeps each shared prefix's keys and values
    once per batch instead of once per row, which cuts attention reads and cache copies several-fold
    when few-shot prefixes are long; without it the prefix cache is copied to every row.
    """

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 32, cascade: bool | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        supported = cascade_supported(model)
        if cascade and not supported:
            log.warning("cascade attention is not supported for %s; copying prefixes per row instead",
                        getattr(model.config, "model_type", type(model).__name__))
        self.cascade = supported if cascade is None else bool(cascade and supported)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        # Only the last position's logits are needed; most HF models can skip the others.
        self._keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}
        self.pad_id = _pad_id(model, tokenizer)
        self.eos_ids = eos_token_ids(model, tokenizer)

    # -- tokenization ---------------------------------------------------------------------

    def _tokenize(self, prompts: Sequence[Prompt]) -> list[_Item]:
        """Split every prompt's token ids into (shared prefix, own suffix).

        The split is taken from the tokenization of the whole text, so the engine feeds exactly the
        ids a plain `generate` on the text would; a prefix whose tokens do not start the whole text
        (a merge across the boundary) is not shared for that prompt.
        """
        items: list[_Item | None] = [None] * len(prompts)
        for special in (True, False):
            idx = [i for i, p in enumerate(prompts) if p.add_special_tokens == special]
            if not idx:
                continue
            full = self.tokenizer([prompts[i].text for i in idx], add_special_tokens=special)["input_ids"]
            prefixes = sorted({prompts[i].prefix for i in idx if prompts[i].prefix})
            pre_ids = dict(zip(prefixes, self.tokenizer(prefixes, add_special_tokens=special)["input_ids"])) \
                if prefixes else {}
            for i, ids in zip(idx, full):
                ids = list(ids)
                if not ids:
                    raise ValueError(f"prompt {i} has no tokens; there is nothing to continue from")
                p = pre_ids.get(prompts[i].prefix, [])
                if p and len(ids) > len(p) and ids[:len(p)] == list(p):
                    items[i] = _Item(i, tuple(p), ids[len(p):])
                else:
                    if p:
                        log.debug("prefix of prompt %d does not tokenize on its own; not shared", i)
                    items[i] = _Item(i, (), ids)
        return items  # type: ignore[return-value]

    # -- generation -----------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Prompt | str], *, greedy: bool = True, n_samples: int = 0,
                 temperature: float = 0.5, top_k: int = 40, max_new_tokens: int = 32, seed: int = 0,
                 stop: str = "\n", progress: ProgressFn | None = None,
                 sample_keys: Sequence[int] | None = None) -> list[Completions]:
        """Answers per prompt; a prompt's samples are a function of (seed, its sample key) alone (see the
        module docstring), so pass stable keys (e.g. `stable_key(f"{fact_id}|{prompt}")`) for
        samples that do not depend on which other prompts are asked."""
        keys = check_sampling(n_samples, temperature, len(prompts), sample_keys)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not prompts:
            return []
        if not greedy and not n_samples:
            return [Completions(None, []) for _ in prompts]
        items = self._tokenize([as_prompt(p) for p in prompts])
        for it in items:
            it.key = keys[it.index]
        prefix_order: dict[tuple[int, ...], int] = {}
        for it in items:
            prefix_order.setdefault(it.prefix, len(prefix_order))
        items.sort(key=lambda it: (prefix_order[it.prefix], len(it.suffix), it.index))

        stops = set(stop_token_ids(self.tokenizer, stop)) if stop else set()
        vocab = self.model.get_output_embeddings().weight.shape[0]
        device = self.model.device
        is_stop = torch.zeros(vocab, dtype=torch.bool, device=device)
        ends = sorted(i for i in stops | self.eos_ids if 0 <= i < vocab)
        if ends:
            is_stop[torch.tensor(ends, device=device)] = True

        results: list[Completions | None] = [None] * len(items)
        arena = Arena()
        was_training = self.model.training
        self.model.eval()  # no dropout while answering; the caller's mode is restored below
        try:
            self._generate_batches(items, results, arena, greedy=greedy, n_samples=n_samples,
                                   temperature=temperature, top_k=top_k, max_new_tokens=max_new_tokens, seed=seed,
                                   stop=stop, is_stop=is_stop, progress=progress)
        finally:
            self.model.train(was_training)
        return results  # type: ignore[return-value]

    def _generate_batches(self, items, results, arena, *, greedy, n_samples, temperature, top_k, max_new_tokens,
                          seed, stop, is_stop, progress) -> None:
        device = self.model.device
        for start in range(0, len(items), self.batch_size):
            batch = items[start:start + self.batch_size]
            streams = None
            if n_samples:  # one random stream per row (greedy rows get a placeholder)
                per = int(greedy) + n_samples
                streams = torch.tensor([stream_key(seed, it.key, j - int(greedy)) if j >= int(greedy) else 0
                                        for it in batch for j in range(per)], dtype=torch.long, device=device)
            tokens = self._run_batch(batch, greedy=greedy, n_samples=n_samples, temperature=temperature,
                                     top_k=top_k, max_new_tokens=max_new_tokens, is_stop=is_stop, streams=streams,
                                     arena=arena)
            per = int(greedy) + n_samples
            for j, it in enumerate(batch):
                rows = [decode_answer(self.tokenizer, t, stop) for t in tokens[j * per:(j + 1) * per]]
                results[it.index] = Completions(rows[0] if greedy else None, rows[int(greedy):])
            if progress is not None:
                progress(len(batch))

    def _forward(self, input_ids, attention_mask, position_ids, cache, state=None):
        if state is not None:
            state.own_mask, state.blocked = attention_mask, None
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, **with_cache(self.model, cache), **self._keep)
        return out.logits[:, -1, :].float()

    def _run_batch(self, batch: list[_Item], *, greedy: bool, n_samples: int, temperature: float, top_k: int,
                   max_new_tokens: int, is_stop: torch.Tensor, streams: torch.Tensor | None,
                   arena: Arena) -> list[list[int]]:
        """Generated token ids per row (prompt-major; greedy row first), each ending at its stop token."""
        device = self.model.device
        s_len = max(len(it.suffix) for it in batch)
        cache = new_cache(self.model, reserve=s_len + max_new_tokens, arena=arena)

        # 1. distinct prefixes, left-padded, once each: their cache goes either to a cascade state
        #    (read once per prefix) or, gathered, to every row's own cache
        prefixes = list(dict.fromkeys(it.prefix for it in batch))
        which = torch.tensor([prefixes.index(it.prefix) for it in batch], device=device)
        p_len = max(len(p) for p in prefixes)
        p_lens = torch.tensor([len(p) for p in prefixes], device=device)
        state = None
        mask = torch.zeros((len(batch), 0), dtype=torch.long, device=device)
        if p_len:
            ids = torch.full((len(prefixes), p_len), self.pad_id, dtype=torch.long, device=device)
            for r, p in enumerate(prefixes):
                if p:
                    ids[r, p_len - len(p):] = torch.tensor(p, device=device)
            p_mask = (torch.arange(p_len, device=device)[None, :] >= (p_len - p_lens)[:, None]).long()
            p_pos = (p_mask.cumsum(-1) - 1).clamp(min=0)
            if self.cascade:
                from transformers import DynamicCache

                p_cache = DynamicCache(config=self.model.config)
                self.model(input_ids=ids, attention_mask=p_mask, position_ids=p_pos, use_cache=True,
                           **with_cache(self.model, p_cache), **self._keep)
                state = _CascadeState([layer.keys for layer in p_cache.layers],
                                      [layer.values for layer in p_cache.layers], p_mask.bool(), which)
            else:
                self.model(input_ids=ids, attention_mask=p_mask, position_ids=p_pos, use_cache=True,
                           **with_cache(self.model, cache), **self._keep)
                cache.batch_select_indices(which)
                mask = p_mask[which]

        # 2. suffixes, right-aligned after the prefix block, with explicit positions
        ids = torch.full((len(batch), s_len), self.pad_id, dtype=torch.long, device=device)
        for r, it in enumerate(batch):
            ids[r, s_len - len(it.suffix):] = torch.tensor(it.suffix, device=device)
        s_lens = torch.tensor([len(it.suffix) for it in batch], device=device)
        s_mask = (torch.arange(s_len, device=device)[None, :] >= (s_len - s_lens)[:, None]).long()
        offset = p_lens[which]
        s_pos = (offset[:, None] + s_mask.cumsum(-1) - 1).clamp(min=0)
        mask = torch.cat([mask, s_mask], dim=1)
        with _cascade(self.model, state):
            return self._decode(cache, state, ids, mask, s_pos, offset + s_lens - 1, which, greedy=greedy,
                                n_samples=n_samples, temperature=temperature, top_k=top_k,
                                max_new_tokens=max_new_tokens, is_stop=is_stop, streams=streams)

    def _decode(self, cache, state, ids, mask, pos, last_pos, which, *, greedy, n_samples, temperature, top_k,
                max_new_tokens, is_stop, streams) -> list[list[int]]:
        device = ids.device
        logits = self._forward(ids, mask, pos, cache, state)

        # 3. one row per greedy answer and sample, sharing the prefill
        per = int(greedy) + n_samples
        if per > 1:
            cache.batch_repeat_interleave(per)
            logits = logits.repeat_interleave(per, dim=0)
            mask = mask.repeat_interleave(per, dim=0)
            last_pos = last_pos.repeat_interleave(per, dim=0)
            which = which.repeat_interleave(per, dim=0)
            if state is not None:
                state.set_rows(which)
        n_rows = logits.shape[0]
        sampled = torch.ones(n_rows, dtype=torch.bool, device=device)
        if greedy:
            sampled[::per] = False

        # 4. decode until every row has ended its line
        out = torch.full((n_rows, max_new_tokens), -1, dtype=torch.long, device=device)
        active = torch.arange(n_rows, device=device)  # original row of each live row
        live_done = torch.zeros(n_rows, dtype=torch.bool, device=device)
        for step in range(max_new_tokens):
            nxt = self._choose(logits, sampled[active], temperature, top_k,
                               streams[active] if streams is not None else None, step)
            out[active, step] = torch.where(live_done, torch.full_like(nxt, -1), nxt)
            live_done |= is_stop[nxt]
            if step == max_new_tokens - 1 or bool(live_done.all()):
                break
            n_done = int(live_done.sum())
            if n_done and n_done * 8 >= live_done.numel():  # drop finished rows once they are an eighth
                keep = (~live_done).nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                active, nxt, mask, last_pos = active[keep], nxt[keep], mask[keep], last_pos[keep]
                live_done, which = live_done[keep], which[keep]
                if state is not None:
                    state.set_rows(which)
            mask = torch.cat([mask, torch.ones((mask.shape[0], 1), dtype=mask.dtype, device=device)], dim=1)
            last_pos = last_pos + 1
            logits = self._forward(nxt[:, None], mask, last_pos[:, None], cache, state)

        rows = out.tolist()
        return [[t for t in row if t >= 0] for row in rows]

    @staticmethod
    def _choose(logits: torch.Tensor, sampled: torch.Tensor, temperature: float, top_k: int,
                streams: torch.Tensor | None, step: int) -> torch.Tensor:
        """Greedy rows: the argmax. Sampled rows: Gumbel-max over the top-k logits / temperature, with
        each row's noise from its own stream (`gumbel_noise`)."""
        nxt = logits.argmax(dim=-1)
        if streams is not None and bool(sampled.any()):
            rows = sampled.nonzero().squeeze(1)
            scores = logits[rows].double() / temperature
            if 0 < top_k < scores.shape[-1]:
                vals, idx = torch.topk(scores, top_k, dim=-1)
            else:
                vals = scores
                idx = torch.arange(scores.shape[-1], device=scores.device).expand_as(scores)
            pick = (vals + gumbel_noise(streams[rows], step, idx)).argmax(dim=-1, keepdim=True)
            nxt[rows] = idx.gather(1, pick).squeeze(1)
        return nxt


@torch.inference_mode()
def naive_generate(model: Any, tokenizer: Any, prompts: Sequence[Prompt | str], *, max_new_tokens: int = 32,
                   stop: str = "\n", stop_early: bool = True) -> list[str]:
    """The slow reference: one greedy `model.generate` per prompt, answer cut at the stop string.

    With `stop_early` generation ends at any token holding the stop string (as the engine does);
    without it, only at EOS or `max_new_tokens` (a plain loop). The answer text is the same either way.
    """
    from transformers import GenerationConfig

    ends = set(eos_token_ids(model, tokenizer))
    if stop_early and stop:
        ends |= stop_token_ids(tokenizer, stop)
    cfg = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=_pad_id(model, tokenizer),
                           eos_token_id=sorted(ends) or None)
    answers = []
    for p in map(as_prompt, prompts):
        enc = tokenizer(p.text, add_special_tokens=p.add_special_tokens, return_tensors="pt").to(model.device)
        out = model.generate(**enc, generation_config=cfg)
        answers.append(decode_answer(tokenizer, out[0, enc["input_ids"].shape[1]:].tolist(), stop))
    return answers
