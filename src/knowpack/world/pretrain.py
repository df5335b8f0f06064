"""Tokenizer training and reproducible CPU pretraining of the world's tiny Llama base model.

The tokenizer is a byte-level BPE trained with `tokenizers` on the pretraining corpus only, wrapped
as a `PreTrainedTokenizerFast` that prepends `<s>`. Its pre-tokenizer keeps a space that follows
":" or "." as a token of its own, so a prompt ending in "Answer: " (the MMLU format) or in "Answer:"
(the probe format) tokenises the same whether the continuation is encoded with it or apart from it,
and an answer reads the same in a Q/A block and in a list of choices. Digits are single tokens,
which makes arithmetic learnable.

The model is a `LlamaForCausalLM` trained from scratch: each epoch's documents (from
`corpus.epoch_documents`; the tokenizer is trained on all of them) are wrapped in `<s> … </s>`,
packed greedily into rows of `seq_len` tokens and trained with AdamW on a one-cycle schedule. Seeds,
data order, thread count and deterministic kernels are fixed, so the same settings give the same
weights on CPU.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator

import torch

from knowpack.models import set_seed

log = logging.getLogger(__name__)

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
# Words take one leading space (" born"), except after ":" and "." where the space stays alone, so an
# answer is the same tokens after "Answer: " and after "A. " in a multiple-choice list; digits,
# punctuation and other whitespace are single pre-tokens.
PRETOKENIZE_PATTERN = r"(?<![:.\n]) ?[A-Za-z]+|[A-Za-z]+|[0-9]|\s|[^A-Za-z0-9\s]"


@dataclass(frozen=True)
class PretrainConfig:
    """Model shape and optimisation settings of the world's base model."""

    vocab_size: int = 4096  # answers of a few tokens at most; 1024 split "hedgehog" into six
    hidden_size: int = 256
    layers: int = 6
    intermediate_size: int = 768
    heads: int = 8
    max_positions: int = 512
    batch_size: int = 20  # rows of seq_len tokens
    seq_len: int = 192  # 256 was several times slower per token on CPU (attention kernels), 192 is not
    lr: float = 3e-3
    warmup_share: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    threads: int = 2
    save_dtype: str = "bfloat16"  # the shipped weights; float32 doubles the files

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- tokenizer ------------------------------------------------------------------------------


def tokenizer_texts(docs: Iterable[str], made_up_words: Iterable[str], syllables: Iterable[str]) -> Iterator[str]:
    """What the world's tokenizer is trained on: the corpus with the world's made-up words taken out, plus
    the syllables those words are built of. As in a real LLM's tokenizer, trained on text where one
    person's or town's name is rare, a name becomes a few syllable tokens (about three per name part),
    not a token of its own; the corpus's common words and real-word answers stay whole."""
    import re

    words = sorted(set(made_up_words), key=len, reverse=True)
    pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")\b") if words else None
    for doc in docs:
        yield pattern.sub("", doc) if pattern else doc
    syl = list(syllables)
    for _ in range(20):  # often enough for every syllable to become a token
        yield " ".join(syl)
        yield " ".join(x.capitalize() for x in syl)


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE on `texts`, as a PreTrainedTokenizerFast with <s>, </s> and <pad>."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=[PAD, BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   model_max_length=512, padding_side="left", clean_up_tokenization_spaces=False)


# --- model ---------------------------------------------------------------------------------


def make_model(cfg: PretrainConfig, tokenizer, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.layers,
        intermediate_size=cfg.intermediate_size, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.max_positions, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    set_seed(seed)
    model = LlamaForCausalLM(config)
    return model


def pack_documents(token_docs: list[list[Any]], seq_len: int) -> list[list[Any]]:
    """Greedy packing in the given order: a document goes into the current row if it fits, else a new one.

    Documents longer than a row are cut to `seq_len` (the corpus keeps them far shorter). Works on
    any per-token sequences (token ids, loss weights).
    """
    rows: list[list[Any]] = []
    row: list[Any] = []
    for ids in token_docs:
        ids = ids[:seq_len]
        if len(row) + len(ids) > seq_len:
            rows.append(row)
            row = []
        row = row + ids
    if row:
        rows.append(row)
    return rows


def epoch_rows(docs: list[str], tokenizer, seq_len: int) -> list[list[int]]:
    """One epoch's documents as `<s> … </s>` token rows of at most `seq_len`, packed in order."""
    enc = tokenizer(docs, add_special_tokens=True, verbose=False)["input_ids"]
    return pack_documents([x + [tokenizer.eos_token_id] for x in enc], seq_len)


def _batches(rows: list[list[int]], batch_size: int, pad_id: int) -> Iterator[tuple[torch.Tensor, ...]]:
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        width = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, r in enumerate(chunk):
            ids[j, :len(r)] = torch.tensor(r)
            mask[j, :len(r)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        yield ids, mask, labels


def one_cycle(total_steps: int, warmup_share: float, start: float = 0.04, end: float = 1e-3):
    """LR multiplier: linear warm-up from `start` to 1, then cosine annealing to `end` (one cycle)."""
    warmup = max(1, round(total_steps * warmup_share))

    def factor(step: int) -> float:
        if step < warmup:
            return start + (1 - start) * step / warmup
        t = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


@contextlib.contextmanager
def deterministic_cpu(threads: int) -> Iterator[None]:
    """Fixed thread count and deterministic kernels for the duration of the block."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def pretrain(corpus_docs: list[list[str]], tokenizer, cfg: PretrainConfig, seed: int, progress: bool = True):
    """Train the base model on a corpus given as one list of documents per epoch; returns (model, history)."""
    from tqdm.auto import tqdm

    epochs = len(corpus_docs)
    model = make_model(cfg, tokenizer, seed)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    log.info("pretraining a %d-parameter Llama (hidden %d, %d layers, FFN %d) for %d epochs",
             n_params, cfg.hidden_size, cfg.layers, cfg.intermediate_size, epochs)

    # The whole corpus is laid out first, so the schedule knows its exact length.
    corpus = [epoch_rows(docs, tokenizer, cfg.seq_len) for docs in corpus_docs]
    total_steps = sum(math.ceil(len(rows) / cfg.batch_size) for rows in corpus)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embed" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, one_cycle(total_steps, cfg.warmup_share))
    history: list[dict[str, float]] = []
    step = 0
    t0 = time.perf_counter()
    bar = tqdm(range(epochs), desc="pretrain", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        rows = corpus[epoch]
        total_loss, total_tokens = 0.0, 0
        for ids, mask, labels in _batches(rows, cfg.batch_size, tokenizer.pad_token_id):
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            step += 1
            n = int((labels[:, 1:] != -100).sum())
            total_loss += out.loss.detach().item() * n
            total_tokens += n
        loss = total_loss / max(total_tokens, 1)
        history.append({"epoch": epoch, "loss": round(loss, 4), "tokens": total_tokens,
                        "seconds": round(time.perf_counter() - t0, 1)})
        bar.set_postfix(loss=f"{loss:.3f}")
        log.info("pretraining epoch %d of %d: loss %.4f over %d tokens", epoch + 1, epochs, loss, total_tokens)
    log.info("pretraining done: %d steps, final loss %.4f, %.0f s", step, history[-1]["loss"],
             time.perf_counter() - t0)
    model.eval()
    return model, history
