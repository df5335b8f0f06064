"""Generation backends for probing, and the built-in batched Hugging Face engine.

    from knowpack.probe.engine import HFEngine
    outs = HFEngine(model, tok, batch_size=32).generate(prompts, greedy=True, n_samples=16)

A backend turns prompts into short answers: one greedy answer and/or `n_samples` sampled answers
per prompt, each cut at the end of its line. `HFEngine` does this fast on any Hugging Face causal LM:

* **Batching.** Prompts are sorted by shared prefix and suffix length and run `batch_size` at a time.
* **Shared prefixes.** The distinct few-shot prefixes of a batch run once (left-padded); their
  key/value cache is then gathered to every row that uses it, and the suffixes are fed after it,
  right-aligned, so every row's last column is a real token. The key/value layout per row is
  ``[pad… prefix][pad… suffix][generated…]``: the 2D attention mask is zero over both pad runs and the
  position ids are given explicitly (prefix 0…p-1, suffix p…p+s-1, then onwards), so each row sees
  exactly the positions and tokens it would see alone.
* **Shared prefill for samples.** Greedy and sampled rows of one prompt reuse its prefill: the cache
  is repeated `1 + n_samples` times after the suffix pass.
* **Early stop.** A row ends at the first token whose text holds the stop string (default newline)
  or at EOS; finished rows are dropped from the batch, and a batch ends when all rows have ended,
  at the latest after `max_new_tokens`.

Sampling uses temperature and top-k with a `torch.Generator` seeded per batch, so the same prompts,
settings and seed give byte-identical answers on the same device. `naive_generate` is the slow
reference: one `model.generate` call per prompt, greedy; tests and `bench/probe.py` check the
engine's greedy answers against it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch

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
                 stop: str = "\n", progress: ProgressFn | None = None) -> list[Completions]: ...


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


_STOP_CACHE: dict[tuple[int, str], frozenset[int]] = {}


def stop_token_ids(tokenizer: Any, stop: str = "\n") -> frozenset[int]:
    """Ids of all tokens whose text contains `stop` (e.g. "\\n", ".\\n", "\\n\\n"); cached per tokenizer.

    A stop string that spans several tokens is not caught here; answers are still cut at it.
    """
    key = (id(tokenizer), stop)
    if key not in _STOP_CACHE:
        n = len(tokenizer)
        texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False)
        _STOP_CACHE[key] = frozenset(i for i, t in enumerate(texts) if stop in t)
    return _STOP_CACHE[key]


def decode_answer(tokenizer: Any, ids: Sequence[int], stop: str = "\n") -> str:
    """Generated ids to answer text: special tokens dropped, cut at the stop string, stripped."""
    text = tokenizer.decode(list(ids), skip_special_tokens=True)
    if stop:
        text = text.split(stop, 1)[0]
    return text.strip()


def _pad_id(model: Any, tokenizer: Any) -> int:
    for v in (getattr(tokenizer, "pad_token_id", None), getattr(model.config, "pad_token_id", None),
              getattr(tokenizer, "eos_token_id", None)):
        if isinstance(v, int):
            return v
    return 0


@dataclass
class _Item:
    index: int  # position in the caller's list
    prefix: tuple[int, ...]
    suffix: list[int]


class HFEngine:
    """Batched greedy + sampled generation on a Hugging Face causal LM (see the module docstring).

    `batch_size` is the number of prompts per batch; each prompt adds `greedy + n_samples` rows.
    """

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 32):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
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
                 stop: str = "\n", progress: ProgressFn | None = None) -> list[Completions]:
        if n_samples < 0:
            raise ValueError(f"n_samples must be >= 0, got {n_samples}")
        if n_samples and temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not prompts:
            return []
        if not greedy and not n_samples:
            return [Completions(None, []) for _ in prompts]
        items = self._tokenize([as_prompt(p) for p in prompts])
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
        for b, start in enumerate(range(0, len(items), self.batch_size)):
            batch = items[start:start + self.batch_size]
            gen = torch.Generator(device=device)
            gen.manual_seed((seed * 1_000_003 + b) % (2**63))
            tokens = self._run_batch(batch, greedy=greedy, n_samples=n_samples, temperature=temperature,
                                     top_k=top_k, max_new_tokens=max_new_tokens, is_stop=is_stop, generator=gen)
            per = int(greedy) + n_samples
            for j, it in enumerate(batch):
                rows = [decode_answer(self.tokenizer, t, stop) for t in tokens[j * per:(j + 1) * per]]
                results[it.index] = Completions(rows[0] if greedy else None, rows[int(greedy):])
            if progress is not None:
                progress(len(batch))
        return results  # type: ignore[return-value]

    def _forward(self, input_ids, attention_mask, position_ids, cache):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :].float()

    def _run_batch(self, batch: list[_Item], *, greedy: bool, n_samples: int, temperature: float, top_k: int,
                   max_new_tokens: int, is_stop: torch.Tensor, generator: torch.Generator) -> list[list[int]]:
        """Generated token ids per row (prompt-major; greedy row first), each ending at its stop token."""
        from transformers import DynamicCache

        device = self.model.device
        cache = DynamicCache(config=self.model.config)

        # 1. distinct prefixes, left-padded, once each
        prefixes = list(dict.fromkeys(it.prefix for it in batch))
        which = torch.tensor([prefixes.index(it.prefix) for it in batch], device=device)
        p_len = max(len(p) for p in prefixes)
        p_lens = torch.tensor([len(p) for p in prefixes], device=device)
        if p_len:
            ids = torch.full((len(prefixes), p_len), self.pad_id, dtype=torch.long, device=device)
            for r, p in enumerate(prefixes):
                if p:
                    ids[r, p_len - len(p):] = torch.tensor(p, device=device)
            p_mask = (torch.arange(p_len, device=device)[None, :] >= (p_len - p_lens)[:, None]).long()
            p_pos = (p_mask.cumsum(-1) - 1).clamp(min=0)
            self.model(input_ids=ids, attention_mask=p_mask, position_ids=p_pos, past_key_values=cache,
                       use_cache=True, logits_to_keep=1)
            cache.batch_select_indices(which)
            mask = p_mask[which]
        else:
            mask = torch.zeros((len(batch), 0), dtype=torch.long, device=device)

        # 2. suffixes, right-aligned after the prefix block, with explicit positions
        s_len = max(len(it.suffix) for it in batch)
        ids = torch.full((len(batch), s_len), self.pad_id, dtype=torch.long, device=device)
        for r, it in enumerate(batch):
            ids[r, s_len - len(it.suffix):] = torch.tensor(it.suffix, device=device)
        s_lens = torch.tensor([len(it.suffix) for it in batch], device=device)
        s_mask = (torch.arange(s_len, device=device)[None, :] >= (s_len - s_lens)[:, None]).long()
        offset = p_lens[which]
        s_pos = (offset[:, None] + s_mask.cumsum(-1) - 1).clamp(min=0)
        mask = torch.cat([mask, s_mask], dim=1)
        logits = self._forward(ids, mask, s_pos, cache)
        last_pos = offset + s_lens - 1

        # 3. one row per greedy answer and sample, sharing the prefill
        per = int(greedy) + n_samples
        if per > 1:
            cache.batch_repeat_interleave(per)
            logits = logits.repeat_interleave(per, dim=0)
            mask = mask.repeat_interleave(per, dim=0)
            last_pos = last_pos.repeat_interleave(per, dim=0)
        n_rows = logits.shape[0]
        sampled = torch.ones(n_rows, dtype=torch.bool, device=device)
        if greedy:
            sampled[::per] = False

        # 4. decode until every row has ended its line
        out = torch.full((n_rows, max_new_tokens), -1, dtype=torch.long, device=device)
        active = torch.arange(n_rows, device=device)  # original row of each live row
        live_done = torch.zeros(n_rows, dtype=torch.bool, device=device)
        for step in range(max_new_tokens):
            nxt = self._choose(logits, sampled[active], temperature, top_k, generator)
            out[active, step] = torch.where(live_done, torch.full_like(nxt, -1), nxt)
            live_done |= is_stop[nxt]
            if step == max_new_tokens - 1 or bool(live_done.all()):
                break
            n_done = int(live_done.sum())
            if n_done and n_done * 4 >= live_done.numel():  # drop finished rows once they are a quarter
                keep = (~live_done).nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                active, nxt, mask, last_pos = active[keep], nxt[keep], mask[keep], last_pos[keep]
                live_done = live_done[keep]
            mask = torch.cat([mask, torch.ones((mask.shape[0], 1), dtype=mask.dtype, device=device)], dim=1)
            last_pos = last_pos + 1
            logits = self._forward(nxt[:, None], mask, last_pos[:, None], cache)

        rows = out.tolist()
        return [[t for t in row if t >= 0] for row in rows]

    @staticmethod
    def _choose(logits: torch.Tensor, sampled: torch.Tensor, temperature: float, top_k: int,
                generator: torch.Generator) -> torch.Tensor:
        nxt = logits.argmax(dim=-1)
        if bool(sampled.any()):
            rows = sampled.nonzero().squeeze(1)
            scores = logits[rows] / temperature
            if 0 < top_k < scores.shape[-1]:
                vals, idx = torch.topk(scores, top_k, dim=-1)
            else:
                vals, idx = scores, None
            pick = torch.multinomial(torch.softmax(vals, dim=-1), 1, generator=generator)
            picked = idx.gather(1, pick).squeeze(1) if idx is not None else pick.squeeze(1)
            nxt[rows] = picked
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
