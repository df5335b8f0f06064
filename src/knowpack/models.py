"""Model and tokenizer loading, device, dtype and seeding, in one place.

Real models (a local directory or a hub id), the embedded world's base model and the tiny random
models that tests build all go through `load_model`, so no code downstream special-cases any of them.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from knowpack import distributed
from knowpack.errors import ModelError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(device: str = "auto") -> torch.device:
    if device in ("auto", "cuda") and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        # under `accelerate launch`/torchrun each process takes its own GPU, not all of them GPU 0
        return torch.device("cuda", distributed.local_rank())
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype '{dtype}'; use one of: auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


# --- the key/value cache argument ------------------------------------------------------------
# transformers 5.2x renamed the forward argument `past_key_values` to `cache` (and the output field
# with it), keeping the old names behind a deprecation warning. Both spellings are looked up once
# per class, so probing and KVA use whichever the installed version calls current.

_CACHE_ARG: dict[type, str] = {}


def cache_arg(module: Any) -> str:
    """The name `module.forward` takes its key/value cache under: 'cache' (current) or 'past_key_values'."""
    import inspect

    cls = type(module)
    if cls not in _CACHE_ARG:
        target = module.get_base_model() if hasattr(module, "get_base_model") else module
        params = inspect.signature(type(target).forward).parameters
        _CACHE_ARG[cls] = "cache" if "cache" in params else "past_key_values"
    return _CACHE_ARG[cls]


def with_cache(module: Any, cache: Any) -> dict[str, Any]:
    """Keyword arguments that hand `cache` to `module.forward` under the name it expects."""
    return {cache_arg(module): cache}


def output_cache(output: Any) -> Any:
    """The key/value cache a forward returned, under either field name, without a deprecation warning."""
    fields = getattr(output, "__dataclass_fields__", {})
    return getattr(output, "cache" if "cache" in fields else "past_key_values")


def special_tokens_for(tokenizer: Any, text: str) -> bool:
    """Whether `text` should be tokenised with the tokenizer's special tokens: yes, unless it already
    starts with the BOS token's text, as chat templates write it (Llama-3's `<|begin_of_text|>`,
    Mistral's `<s>`), where a second BOS would be prepended."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (isinstance(bos, str) and bos and text.startswith(bos))


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text`, with exactly one BOS where the tokenizer adds one (see `special_tokens_for`)."""
    return list(tokenizer(text, add_special_tokens=special_tokens_for(tokenizer, text))["input_ids"])


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name and Path(name).expanduser().exists()


def check_model_dir(path: Path) -> None:
    """A clear error for a directory that is not a Hugging Face model, naming what is missing."""
    if not path.exists():
        raise ModelError(f"model path '{path}' does not exist; give a local model directory or a hub id "
                         "(for the embedded world: `knowpack world build --out DIR`, then --model DIR/model)")
    if not path.is_dir():
        raise ModelError(f"model path '{path}' is a file; give the directory that holds config.json")
    missing = [n for n in ("config.json",) if not (path / n).exists()]
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.safetensors.index.json")) or \
        any(path.glob("pytorch_model*.bin"))
    if not has_weights:
        missing.append("model weights (*.safetensors)")
    if missing:
        raise ModelError(f"model directory '{path}' is missing {', '.join(missing)}")


#: files of which a local tokenizer directory holds at least one
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    local = Path(name_or_path).expanduser()
    if local.is_dir() and not any((local / n).exists() for n in TOKENIZER_FILES):
        # some transformers releases build an empty default tokenizer from config.json instead of failing
        raise ModelError(f"cannot load a tokenizer from '{name_or_path}': none of {', '.join(TOKENIZER_FILES)} is "
                         "there; save the model's tokenizer into the directory with `tokenizer.save_pretrained`")
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as exc:  # missing files, unreadable tokenizer.json, bad config
        raise ModelError(f"cannot load a tokenizer from '{name_or_path}': {_first_line(exc)}; the directory "
                         "needs the tokenizer files (tokenizer.json, tokenizer_config.json) saved with "
                         "`tokenizer.save_pretrained`") from None
    if tok.pad_token is None:
        # Decoder-only models often ship without a pad token; EOS is the usual stand-in and is
        # safe because padded positions are always masked out.
        if tok.eos_token is None:
            raise ModelError(f"tokenizer of '{name_or_path}' has neither a pad nor an EOS token; "
                             "add a pad token to its tokenizer_config.json")
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str | os.PathLike, *, device: str = "auto", dtype: str = "auto",
               trust_remote_code: bool = False, with_tokenizer: bool = True):
    """Load a causal LM (and its tokenizer) for inference or training; returns (model, tokenizer)."""
    from transformers import AutoModelForCausalLM

    name = str(name_or_path)
    if _looks_local(name) or Path(name).expanduser().exists():
        check_model_dir(Path(name).expanduser())
        name = str(Path(name).expanduser())
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    # The tokenizer first: it is cheap, and a broken one should not cost a large model's load time.
    tok = load_tokenizer(name, trust_remote_code=trust_remote_code) if with_tokenizer else None
    from safetensors import SafetensorError

    try:
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=torch_dtype, trust_remote_code=trust_remote_code, use_safetensors=None
        )
    except OSError as exc:
        raise ModelError(f"cannot load model '{name}': {exc}. Without internet, pass a local directory "
                         "that holds config.json and *.safetensors") from None
    except SafetensorError as exc:
        raise ModelError(f"model '{name}': a weights file is corrupt or truncated ({exc}); copy or save "
                         "the model again") from None
    except ValueError as exc:
        text = str(exc)
        if "trust_remote_code" in text:
            raise ModelError(f"model '{name}' needs custom code; pass --trust-remote-code if you trust it") from None
        if "model_type" in text or "does not recognize this architecture" in text or "Unrecognized" in text:
            import transformers

            raise ModelError(f"model '{name}' has an architecture this transformers ({transformers.__version__}) "
                             f"does not know: {_first_line(exc)} Check model_type in config.json, upgrade "
                             "transformers, or pass --trust-remote-code if the model ships its own code") from None
        raise ModelError(f"cannot load model '{name}': {_first_line(exc)}") from None
    except RuntimeError as exc:
        if "mismatch" not in str(exc) and "size" not in str(exc):
            raise
        raise ModelError(f"model '{name}': the weights do not fit the shapes in config.json ({_first_line(exc)}); "
                         "were config.json and the weights saved from the same model?") from None
    model.to(dev)
    model.eval()
    return model, tok


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# --- tiny random models for tests and benchmarks -------------------------------------------

TINY_ARCHS = ("llama", "qwen2", "mistral")


def tiny_config(arch: str = "llama", *, vocab_size: int = 320, hidden_size: int = 32, layers: int = 2,
                intermediate_size: int = 64, heads: int = 4, kv_heads: int = 2, max_positions: int = 256,
                **extra: Any):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                  intermediate_size=intermediate_size, num_attention_heads=heads,
                  num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    common.update(extra)
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "mistral":
        return MistralConfig(**common, sliding_window=None)
    raise ValueError(f"unknown tiny arch '{arch}'; use one of {TINY_ARCHS}")


def tiny_model(arch: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32, **kwargs: Any):
    """A randomly initialised tiny causal LM of the given architecture, in eval mode."""
    from transformers import AutoModelForCausalLM

    set_seed(seed)
    cfg = tiny_config(arch, **kwargs)
    model = AutoModelForCausalLM.from_config(cfg)
    return model.to(dtype).eval()


@dataclass
class ByteTokenizerSpec:
    """Where `tiny_tokenizer` saved a byte-level tokenizer (vocab 256 + specials)."""

    path: Path


def tiny_tokenizer(out_dir: str | os.PathLike | None = None):
    """A small byte-level BPE tokenizer built in code (no download), as a PreTrainedTokenizerFast.

    Vocab: 3 specials (<pad>=0, <s>=1, </s>=2) + 256 bytes + a few merges learned from a fixed text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = ["Question: What is the capital of France?\nAnswer: Paris\n",
            "There is a single choice question about geography. Answer the question by replying A, B, C or D."]
    tok.train_from_iterator(text * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if out_dir is not None:
        save_tokenizer(fast, out_dir)
    return fast


def save_tokenizer(tokenizer: Any, out_dir: str | Path) -> None:
    """`tokenizer.save_pretrained(out_dir)`, loadable by every supported transformers release.

    transformers 5 names a fast tokenizer's class `TokenizersBackend` in tokenizer_config.json, which
    4.x cannot import; `PreTrainedTokenizerFast` is the same class under the name both releases know.
    """
    import json

    tokenizer.save_pretrained(str(out_dir))
    path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
