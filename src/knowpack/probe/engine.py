"""Generation backends for probing, and the built-in batched Hugging Face engine.

    from knowpack.probe.engine import HFEngine
    outs = HFEngine(model, tok, batch_size=64).generate(prompts, greedy=True, n_samples=16)

A backend turns prompts into short answers: one greedy answer and/or `n_samples` sampled answers
per prompt, each cut at the end of its line. `HFEngine` does this fast on any Hugging Face causal LM:

* **Batching.** Prompts that share a few-shot prefix are grouped; prompts that share nothing (with
  exemplars drawn per question, nearly all of them) are sorted by length; `batch_size` prompts run
  at a time.
* **One prefill per prefix.** The distinct prefixes of a batch run once, in chunks of about
  `prefill_tokens` tokens (see `default_prefill_tokens`), and the prefill stops once the last layer
  has written its keys and values. A prompt whose prefix is its
  own is prefilled whole but for its last token. The suffixes follow, right-aligned so every row's
  last column is a real token, with explicit position ids and a mask over the pads, so each row
  sees exactly the positions and tokens it would see alone. Where the architecture is plain causal
  attention (Llama, Mistral, Qwen2/3 without sliding windows) the prefix keys/values stay in one copy
  per prefix and a "cascade" attention function reads them for all its rows, merged with each row's
  own keys in one softmax; otherwise the prefix cache is gathered to every row, giving the layout
  ``[pad… prefix][pad… suffix][generated…]`` with the mask zero over both pad runs.
* **Shared decoding for samples.** The greedy answer and the samples of a prompt start from its
  prefill, and at a low temperature they mostly pick the same tokens. The model runs once per
  distinct (prompt, tokens so far) sequence, a *node*; each answer reads its next token from its
  node's logits and the answers of a node that pick the same token share the child node, so work
  is done per distinct sequence, not per answer.
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
top-k softmax at the given temperature. `naive_generate` is the slow reference: one
`model.generate` call per prompt, greedy; tests and `bench/probe.py` check the engine's greedy
answers against it (and `naive_sample`, transformers' own sampler, against its samples'
distribution).
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


def gumbel_noise(streams: torch.Tensor, step: int, tokens: torch.Tensor,
                 rows: torch.Tensor | None = None) -> torch.Tensor:
    """Standard Gumbel noise [R, K] for rows of 64-bit `streams` [R] at `step`, one value per token id
    in `tokens` [R, K] (or in `tokens[rows]`, when rows share token lists); a pure function of its
    inputs, on any device."""
    hi, lo = (streams >> 32) & 0xFFFFFFFF, streams & 0xFFFFFFFF
    x = _mix32((tokens.long() & 0xFFFFFFFF) ^ (((step + 1) * 0x9E3779B9) & 0xFFFFFFFF))
    if rows is not None:  # the token part of the hash once per token list
        x = x[rows]
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
    cost more than the attention itself. An engine on a CPU keeps its arena between calls.
    """

    def __init__(self) -> None:
        self._flat: dict[tuple[Any, ...], torch.Tensor] = {}

    def take(self, key: tuple[Any, ...], shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        n = 1
        for d in shape:
            n *= d
        flat = self._flat.get(key)
        if flat is None or flat.numel() < n or flat.dtype != like.dtype or flat.device != like.device:
            # a quarter more than asked: decode batches grow as answers branch
            flat = self._flat[key] = like.new_empty(max(n + n // 4, flat.numel() if flat is not None else 0))
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
            elif need > self._k.shape[2]:  # beyond the reserve: grow into the other buffers
                self.slot = 1 - self.slot
                k, v = self._buffers(self._k.shape[0], max(need, 2 * self._k.shape[2]), self.slot)
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
            n = self.length if self._k.device.type == "cpu" else self._k.shape[2]  # on a CPU, only what is filled
            torch.index_select(self._k[:, :, :n], 0, indices, out=k[:, :, :n])
            torch.index_select(self._v[:, :, :n], 0, indices, out=v[:, :, :n])
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
    """The shared prefixes of a batch, kept once, and which prefix each live row reads.

    Rows of one prefix are contiguous (batches are sorted by prefix, and the decode loop keeps
    children in their parents' order). For the prefix part of attention every prefix's rows are laid
    out in `slots` columns, so one batched matmul over the prefixes serves all rows, with no Python
    loop over prefixes; `dense` marks the common case of one row per prefix, in order.
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], prefix_mask: torch.Tensor,
                 which: torch.Tensor, arena: Arena):
        # float32, values at pad positions zeroed (`HFEngine._prefill`) so that a zero weight times a
        # non-finite value (a fully padded prefix) cannot leak into the output
        self.keys, self.values, self.arena, self.buffer = keys, values, arena, 0
        self.prefix_mask = prefix_mask
        self.where = torch.arange(len(prefix_mask), device=prefix_mask.device)  # prefix id -> its place
        self.own_mask: torch.Tensor | None = None  # (rows, own length), set before each forward
        self.blocked: torch.Tensor | None = None  # the own-part mask built from it by the first layer
        self.own_pads = True  # whether own masks may hold pads (else one query per row sees all its keys)
        self.set_rows(which)

    def set_rows(self, which: torch.Tensor) -> None:
        """`which[r]`: the prefix (its index at construction) of live row r; rows sorted by prefix."""
        live, counts = torch.unique_consecutive(which, return_counts=True)
        if 4 * len(live) <= 3 * self.keys[0].shape[0]:  # a quarter of the prefixes ended: keep the live ones
            place = self.where[live]
            self.buffer = 1 - self.buffer  # copy between two reused buffers, as `BufferedLayer` does
            for name, kv in (("pk", self.keys), ("pv", self.values)):
                for j, t in enumerate(kv):
                    kv[j] = torch.index_select(t, 0, place, out=self.arena.take(
                        (name, j, self.buffer), (len(place), *t.shape[1:]), t))
            self.prefix_mask = self.prefix_mask.index_select(0, place)
            self.where = torch.full_like(self.where, -1)
            self.where[live] = torch.arange(len(live), device=live.device)
        self.which = self.where[which]
        self.row_mask = ~self.prefix_mask[self.which][:, None, None, :]
        starts = counts.cumsum(0) - counts
        self.slot = torch.arange(len(which), device=which.device) - starts.repeat_interleave(counts)
        self.slots = int(counts.max())
        self.dense = self.slots == 1 and len(live) == self.keys[0].shape[0]


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

    key, value = key.float(), value.float()
    # one query per row (decoding): products and sums beat a batch of tiny matrix products
    own = (qf[:, :, :, None] * key[:, :, None]).sum(-1) if q_len == 1 else qf @ key.transpose(-1, -2)
    if q_len > 1 or st.own_pads:
        if st.blocked is None or st.blocked.shape[-2:] != (gq, own_len):  # once per forward, not per layer
            causal = torch.arange(own_len, device=query.device)[None, :] <= \
                torch.arange(own_len - q_len, own_len, device=query.device)[:, None]
            st.blocked = ~(st.own_mask.bool()[:, None, None, :] & causal[None, None]).repeat(1, 1, group, 1)
        own.masked_fill_(st.blocked, neg)

    kp, vp = st.keys[module.layer_idx], st.values[module.layer_idx]  # prefixes, kv_heads, p_len, dim
    n_pre, p_len = kp.shape[0], kp.shape[2]
    if st.dense:
        pre = qf @ kp.transpose(-1, -2)
    else:  # rows placed in (prefix, slot) cells; empty cells are zero and never read back
        grid = qf.new_zeros(n_pre, kv_heads, st.slots, gq, dim)
        grid[st.which, :, st.slot] = qf
        pre = (grid.view(n_pre, kv_heads, -1, dim) @ kp.transpose(-1, -2)) \
            .view(n_pre, kv_heads, st.slots, gq, p_len)[st.which, :, st.slot]
    pre.masked_fill_(st.row_mask, neg)

    probs = torch.softmax(torch.cat([pre, own], dim=-1), dim=-1)
    p_own = probs[..., p_len:]  # rows, kv_heads, gq, own_len
    out = (p_own[..., None] * value[:, :, None]).sum(-2) if q_len == 1 else p_own @ value
    p_pre = probs[..., :p_len]
    if st.dense:
        out += p_pre @ vp
    else:
        grid = p_pre.new_zeros(n_pre, kv_heads, st.slots, gq, p_len)
        grid[st.which, :, st.slot] = p_pre
        out += (grid.view(n_pre, kv_heads, -1, p_len) @ vp).view(n_pre, kv_heads, st.slots, gq, -1)[
            st.which, :, st.slot]
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


def _arrange(items: list[_Item]) -> list[_Item]:
    """Batch order: prompts sharing a prefix grouped (by first appearance, then suffix length), then
    the prompts that share nothing, by length.

    A prompt whose prefix no other prompt of the call has (per-question exemplars, plain strings) is
    re-split into all its tokens but the last, prefilled with its neighbours of similar length, and
    its last token: the prefill's keys and values are then shared by the prompt's greedy and sampled
    answers, and nothing but generated tokens is ever copied per answer.
    """
    count: dict[tuple[int, ...], int] = {}
    for it in items:
        count[it.prefix] = count.get(it.prefix, 0) + 1
    shared, solo = [], []
    for it in items:
        if it.prefix and count[it.prefix] > 1:
            shared.append(it)
        else:
            ids = [*it.prefix, *it.suffix]
            it.prefix, it.suffix = tuple(ids[:-1]), ids[-1:]
            solo.append(it)
    order: dict[tuple[int, ...], int] = {}
    for it in shared:
        order.setdefault(it.prefix, len(order))
    shared.sort(key=lambda it: (order[it.prefix], len(it.suffix), it.index))
    solo.sort(key=lambda it: (len(it.prefix), it.index))
    return shared + solo


class _PrefillDone(Exception):
    """Raised once the last layer's keys and values of a prefill are in its cache."""


_PREFILL_CACHE: type | None = None


def _prefill_cache(config: Any):
    global _PREFILL_CACHE
    if _PREFILL_CACHE is None:
        from transformers import DynamicCache

        class PrefillCache(DynamicCache):
            """Ends the forward pass once the last layer has written its keys and values."""

            def __init__(self, config):
                super().__init__(config=config)
                self.last_layer = config.get_text_config().num_hidden_layers - 1

            def update(self, key_states, value_states, layer_idx, *args, **kwargs):
                out = super().update(key_states, value_states, layer_idx, *args, **kwargs)
                if layer_idx == self.last_layer:
                    raise _PrefillDone
                return out

        _PREFILL_CACHE = PrefillCache
    return _PREFILL_CACHE(config)


def prefill_kv(model: Any, **inputs: Any):
    """The key/value cache (a `DynamicCache`) of `model` run on `inputs`, and nothing else.

    A prefill needs nothing from the last layer but its keys and values: its attention output, MLP,
    the final norm and the logits are never read. The forward pass stops as soon as the last layer
    has written them, which saves most of a layer per token, while the keys and values still come
    from the model's own code. `model` is a causal LM or its inner decoder.
    """
    cache = _prefill_cache(model.config)
    try:
        model(**inputs, use_cache=True, **with_cache(model, cache))
    except _PrefillDone:
        pass
    return cache


def default_prefill_tokens(model: Any) -> int:
    """Tokens per prefill forward: 16,384 on an accelerator, 4,096 on a CPU.

    On the 2-core CPU, prefilling the 400 distinct 106-token prefixes of `bench/probe.py` on the
    world model (hidden 256) in batches of 64 took, as medians of four interleaved repeats, 9.75 s
    in forwards of 256 tokens, 5.98-6.75 s of 512, 5.51 s of 1,024, 4.86-5.23 s of 2,048, 4.41 s of
    4,096 and 4.90 s of 8,192: the per-forward work outside the matrix products (norms, rotary,
    cache copies) shrinks per token as forwards grow, until the activations leave the cache.
    """
    return 4096 if model.device.type == "cpu" else 16384


class HFEngine:
    """Batched greedy + sampled generation on a Hugging Face causal LM (see the module docstring).

    `batch_size` is the number of prompts per batch; each prompt adds `greedy + n_samples` answers,
    decoded together while their tokens agree. `cascade` (default: where the architecture allows)
    keeps each prefix's keys and values once per batch instead of once per decoding row, which cuts
    attention reads and cache copies several-fold; without it the prefix cache is copied to every
    row. `prefill_tokens` (default `default_prefill_tokens`) sizes the prefill's forward passes.
    """

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 64, cascade: bool | None = None,
                 prefill_tokens: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.prefill_tokens = prefill_tokens or default_prefill_tokens(model)
        self._arena = Arena()
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
        items = _arrange(items)

        stops = set(stop_token_ids(self.tokenizer, stop)) if stop else set()
        vocab = self.model.get_output_embeddings().weight.shape[0]
        device = self.model.device
        is_stop = torch.zeros(vocab, dtype=torch.bool, device=device)
        ends = sorted(i for i in stops | self.eos_ids if 0 <= i < vocab)
        if ends:
            is_stop[torch.tensor(ends, device=device)] = True

        results: list[Completions | None] = [None] * len(items)
        # On a CPU the buffers are kept for the next call (fresh pages cost more than holding them);
        # an accelerator's own allocator already reuses its memory.
        arena = self._arena if self.model.device.type == "cpu" else Arena()
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
        per = int(greedy) + n_samples
        for start in range(0, len(items), self.batch_size):
            batch = items[start:start + self.batch_size]
            streams = None
            if n_samples:  # one random stream per row (greedy rows get a placeholder)
                streams = torch.tensor([stream_key(seed, it.key, j - int(greedy)) if j >= int(greedy) else 0
                                        for it in batch for j in range(per)], dtype=torch.long, device=device)
            tokens = self._run_batch(batch, greedy=greedy, n_samples=n_samples, temperature=temperature,
                                     top_k=top_k, max_new_tokens=max_new_tokens, is_stop=is_stop, streams=streams,
                                     arena=arena)
            # many answers of a prompt are the same tokens: decode each distinct sequence once
            distinct = list(dict.fromkeys(map(tuple, tokens)))
            texts = dict(zip(distinct, (cut_answer(t, stop) for t in
                                        self.tokenizer.batch_decode(distinct, skip_special_tokens=True))))
            for j, it in enumerate(batch):
                rows = [texts[tuple(t)] for t in tokens[j * per:(j + 1) * per]]
                results[it.index] = Completions(rows[0] if greedy else None, rows[int(greedy):])
            if progress is not None:
                progress(len(batch))

    def _forward(self, input_ids, attention_mask, position_ids, cache, state=None):
        if state is not None:
            state.own_mask, state.blocked = attention_mask, None
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, **with_cache(self.model, cache), **self._keep)
        return out.logits[:, -1, :].float()

    def _prefill(self, prefixes: list[tuple[int, ...]], p_len: int,
                 arena: Arena) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Keys and values [prefixes, kv_heads, p_len, head_dim] per layer, float32, right-padded (pad
        values zeroed), computed in chunks of about `prefill_tokens` tokens.

        A chunk is right-padded, so every prefix starts at position 0 and sees exactly what it would
        alone under the plain causal mask (no padding mask, hence the causal attention kernels; the
        pads' outputs are never read). For the chunk size on a CPU see `default_prefill_tokens`.
        """
        device = self.model.device
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        lo = 0
        while lo < len(prefixes):
            hi, longest = lo + 1, len(prefixes[lo])
            while hi < len(prefixes) and max(longest, len(prefixes[hi])) * (hi + 1 - lo) <= self.prefill_tokens:
                longest = max(longest, len(prefixes[hi]))
                hi += 1
            part = prefixes[lo:hi]
            if longest:
                ids = torch.tensor([list(p) + [self.pad_id] * (longest - len(p)) for p in part], device=device)
                lens = torch.tensor([len(p) for p in part], device=device)
                pad = (torch.arange(longest, device=device)[None, :] >= lens[:, None])[:, None, :, None]
                c_cache = prefill_kv(self.model, input_ids=ids)
                for j, layer in enumerate(c_cache.layers):
                    if len(keys) <= j:
                        for name, t, out in (("pk", layer.keys, keys), ("pv", layer.values, values)):
                            like = t.new_empty(0, dtype=torch.float32)
                            out.append(arena.take((name, j, 0), (len(prefixes), t.shape[1], p_len, t.shape[3]),
                                                  like))
                        values[j][:lo].zero_()  # earlier chunks without tokens
                    # keys at pad positions need no clearing: their scores are masked whatever they hold
                    keys[j][lo:hi, :, :longest] = layer.keys
                    values[j][lo:hi, :, :longest].copy_(layer.values).masked_fill_(pad, 0)
            if values:
                for v in values:
                    v[lo:hi, :, longest:].zero_()
            lo = hi
        return keys, values

    def _run_batch(self, batch: list[_Item], *, greedy: bool, n_samples: int, temperature: float, top_k: int,
                   max_new_tokens: int, is_stop: torch.Tensor, streams: torch.Tensor | None,
                   arena: Arena) -> list[list[int]]:
        """Generated token ids per row (prompt-major; greedy row first), each ending at its stop token."""
        device = self.model.device
        s_len = max(len(it.suffix) for it in batch)
        # room for the suffix (after a copied prefix) and the first generated tokens; most answers end
        # there, and a longer one grows the buffers
        cache = new_cache(self.model, reserve=(0 if self.cascade else s_len) + min(max_new_tokens, 16), arena=arena)

        # 1. distinct prefixes, once each: their cache goes either to a cascade state (read once per
        #    prefix) or, left-padded and gathered, to every row's own cache
        place: dict[tuple[int, ...], int] = {}
        for it in batch:
            place.setdefault(it.prefix, len(place))
        prefixes = list(place)
        which = torch.tensor([place[it.prefix] for it in batch], device=device)
        p_len = max(len(p) for p in prefixes)
        p_lens = torch.tensor([len(p) for p in prefixes], device=device)
        state = None
        mask = torch.zeros((len(batch), 0), dtype=torch.long, device=device)
        if p_len:
            if self.cascade:
                keys, values = self._prefill(prefixes, p_len, arena)
                p_mask = torch.arange(p_len, device=device)[None, :] < p_lens[:, None]
                state = _CascadeState(keys, values, p_mask, which, arena)
            else:
                p_mask = (torch.arange(p_len, device=device)[None, :] >= (p_len - p_lens)[:, None]).long()
                ids = torch.tensor([[self.pad_id] * (p_len - len(p)) + list(p) for p in prefixes], device=device)
                self.model(input_ids=ids, attention_mask=p_mask, position_ids=(p_mask.cumsum(-1) - 1).clamp(min=0),
                           use_cache=True, **with_cache(self.model, cache), **self._keep)
                cache.batch_select_indices(which)
                mask = p_mask[which]

        # 2. suffixes, right-aligned after the prefix block, with explicit positions
        ids = torch.tensor([[self.pad_id] * (s_len - len(it.suffix)) + it.suffix for it in batch], device=device)
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
        """Decode every answer row of the batch, computing each distinct token sequence once.

        The answers of one prompt (greedy and samples) start from one state, and at a low temperature
        most of them keep choosing the same tokens. So the model runs on *nodes*, the distinct
        (prompt, tokens so far) sequences, and every answer row points at its node: a row takes its next
        token from its node's logits (its own noise for samples), and the rows of a node that chose
        the same token share the child node. Each answer's tokens are what it would get on a row of its
        own; only the work is shared.
        """
        device = ids.device
        if state is not None:  # rows only ever gain unmasked columns, so this holds for the whole batch
            state.own_pads = not bool(mask.all())
        logits = self._forward(ids, mask, pos, cache, state)  # one node per prompt
        per = int(greedy) + n_samples
        n_rows = logits.shape[0] * per
        vocab = logits.shape[-1]
        node = torch.arange(logits.shape[0], device=device).repeat_interleave(per)  # each live row's node
        sampled = torch.ones(n_rows, dtype=torch.bool, device=device)
        if greedy:
            sampled[::per] = False
        out = torch.full((n_rows, max_new_tokens), -1, dtype=torch.long, device=device)
        active = torch.arange(n_rows, device=device)  # original row of each live row
        # Without cascade state every node holds a copy of its prompt: do not copy the cache only to
        # drop a few finished nodes (they run idle until an eighth of them have ended).
        lazy = state is None
        for step in range(max_new_tokens):
            nxt = self._choose(logits, sampled, temperature, top_k, streams, step, node=node)
            out[active, step] = nxt
            if step == max_new_tokens - 1:
                break
            going = ~is_stop[nxt]
            keep = going.nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            if keep.numel() < going.numel():
                active, nxt, node, sampled = active[keep], nxt[keep], node[keep], sampled[keep]
                if streams is not None:
                    streams = streams[keep]
            children, node = torch.unique(node * vocab + nxt, return_inverse=True)  # sorted: parents' order
            parent, token = children // vocab, children % vocab
            n_nodes = logits.shape[0]
            if lazy and len(children) <= n_nodes and torch.equal(torch.unique_consecutive(parent), parent) \
                    and 8 * (n_nodes - len(children)) < n_nodes:
                # no branching and few ended: children stay in their parents' places
                fed = torch.full((n_nodes,), self.pad_id, dtype=torch.long, device=device)
                fed[parent] = token
                node, token = parent[node], fed
            elif len(children) != n_nodes or not torch.equal(parent, torch.arange(n_nodes, device=device)):
                cache.batch_select_indices(parent)
                mask, last_pos, which = mask[parent], last_pos[parent], which[parent]
                if state is not None:
                    state.set_rows(which)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            last_pos = last_pos + 1
            logits = self._forward(token[:, None], mask, last_pos[:, None], cache, state)

        rows = out.tolist()
        return [[t for t in row if t >= 0] for row in rows]

    @staticmethod
    def _choose(logits: torch.Tensor, sampled: torch.Tensor, temperature: float, top_k: int,
                streams: torch.Tensor | None, step: int, node: torch.Tensor | None = None) -> torch.Tensor:
        """The next token of every row. `logits` are per node, `node[r]` is row r's node (default: row r
        is node r). Greedy rows: the argmax. Sampled rows: Gumbel-max over the top-k logits /
        temperature, with each row's noise from its own stream (`gumbel_noise`)."""
        best = logits.argmax(dim=-1)
        nxt = best.clone() if node is None else best[node]
        if streams is not None and bool(sampled.any()):
            rows = sampled.nonzero().squeeze(1)
            nodes, at = torch.unique(rows if node is None else node[rows], return_inverse=True)
            scores = logits[nodes]  # the top k once per node (in float32: the same order as in float64)
            if 0 < top_k < scores.shape[-1]:
                vals, idx = torch.topk(scores, top_k, dim=-1)
            else:
                vals = scores
                idx = torch.arange(scores.shape[-1], device=scores.device).expand_as(scores)
            vals = vals.double() / temperature
            pick = (vals[at] + gumbel_noise(streams[rows], step, idx, rows=at)).argmax(dim=-1, keepdim=True)
            nxt[rows] = idx[at].gather(1, pick).squeeze(1)
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


@torch.inference_mode()
def naive_sample(model: Any, tokenizer: Any, prompts: Sequence[Prompt | str], *, n_samples: int = 16,
                 temperature: float = 0.5, top_k: int = 40, max_new_tokens: int = 32, stop: str = "\n",
                 seed: int = 0) -> list[list[str]]:
    """The slow reference for samples: one sampling `model.generate` per prompt (`num_return_sequences`
    = n_samples, transformers' own temperature/top-k sampler, its own random numbers), stopping at the
    end of the line as the engine does. Its answers follow the same distribution as the engine's, not
    the same draws; `bench/probe.py` compares the two distributions."""
    from transformers import GenerationConfig

    ends = set(eos_token_ids(model, tokenizer)) | (stop_token_ids(tokenizer, stop) if stop else set())
    cfg = GenerationConfig(do_sample=True, temperature=temperature, top_k=top_k, top_p=1.0,
                           num_return_sequences=n_samples, max_new_tokens=max_new_tokens,
                           pad_token_id=_pad_id(model, tokenizer), eos_token_id=sorted(ends) or None)
    answers = []
    for i, p in enumerate(map(as_prompt, prompts)):
        torch.manual_seed(seed * 1_000_003 + i)
        enc = tokenizer(p.text, add_special_tokens=p.add_special_tokens, return_tensors="pt").to(model.device)
        out = model.generate(**enc, generation_config=cfg)[:, enc["input_ids"].shape[1]:]
        answers.append([decode_answer(tokenizer, row.tolist(), stop) for row in out])
    return answers
