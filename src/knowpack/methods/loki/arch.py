"""Where the FFN knowledge vectors live in a Hugging Face causal LM.

LoKI works on the rows of every decoder layer's `mlp.down_proj.weight` (shape [D, d_ff]). Llama,
Qwen2 and Mistral share one layout — `model.layers[i].mlp.down_proj`, a final `model.norm`,
`model.rotary_emb` and `lm_head` — which this module locates, so that KVA, selection and the LoKI
layers never hard-code attribute paths.

    from knowpack.methods.loki.arch import down_projs
    downs = down_projs(model)            # one nn.Linear per layer, [D, d_ff] weights
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from knowpack.errors import KnowpackError

log = logging.getLogger(__name__)

#: Architectures whose decoder layout the fast KVA path relies on (and that tests cover).
SUPPORTED_ARCHS = ("llama", "qwen2", "mistral")


def model_type(model: nn.Module) -> str:
    cfg = getattr(model, "config", None)
    return str(getattr(cfg, "model_type", None) or type(model).__name__)


def _unsupported(model: nn.Module, why: str) -> KnowpackError:
    return KnowpackError(
        f"model type '{model_type(model)}' is not supported by LoKI: {why}. LoKI needs decoder layers at "
        f"model.layers[i] with an FFN projection mlp.down_proj (hidden x intermediate); supported "
        f"architectures: {', '.join(SUPPORTED_ARCHS)}"
    )


def decoder_model(model: nn.Module) -> nn.Module:
    """The inner decoder (`model.model` for *ForCausalLM), which holds `layers`, `norm`, `rotary_emb`."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "layers"):
        return inner
    if hasattr(model, "layers"):
        return model
    raise _unsupported(model, "no decoder layers found at model.layers")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder layers; raises KnowpackError for a model without a `down_proj` in each."""
    layers = decoder_model(model).layers
    if len(layers) == 0:
        raise _unsupported(model, "the model has no decoder layers")
    for i, layer in enumerate(layers):
        mlp = getattr(layer, "mlp", None)
        down = getattr(mlp, "down_proj", None) if mlp is not None else None
        if not isinstance(down, nn.Linear):
            raise _unsupported(model, f"decoder layer {i} has no mlp.down_proj linear layer")
    return layers


def down_projs(model: nn.Module) -> list[nn.Linear]:
    """Every layer's `mlp.down_proj`, in layer order."""
    return [layer.mlp.down_proj for layer in decoder_layers(model)]


def down_proj_names(model: nn.Module) -> list[str]:
    """Qualified module names of the `down_proj` layers (as in `model.named_modules()`), in layer order."""
    wanted = {id(m): i for i, m in enumerate(down_projs(model))}
    names: list[str | None] = [None] * len(wanted)
    for name, module in model.named_modules():
        if id(module) in wanted:
            names[wanted[id(module)]] = name
    return [n for n in names if n is not None]


def hidden_size(model: nn.Module) -> int:
    """D: the number of rows of every `down_proj.weight` (= output coordinates of the FFN)."""
    return int(down_projs(model)[0].weight.shape[0])


@dataclass(frozen=True)
class DecoderParts:
    """The modules the fast KVA path drives by hand, one token at a time."""

    embed: nn.Module
    layers: nn.ModuleList
    norm: nn.Module
    rotary: nn.Module
    lm_head: nn.Module

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def decoder_parts(model: nn.Module) -> DecoderParts:
    """Locate embedding, layers, final norm, rotary embedding and LM head of a supported model.

    Only the architectures in SUPPORTED_ARCHS are accepted: the fast path re-runs their decoder
    layers one token at a time and assumes nothing happens between the layers other than what these
    modules do (no embedding scaling or logit soft-capping, as Gemma has).
    """
    layers = decoder_layers(model)
    mtype = model_type(model)
    if mtype not in SUPPORTED_ARCHS:
        raise KnowpackError(
            f"the fast KVA path supports model types {', '.join(SUPPORTED_ARCHS)}, not '{mtype}'; "
            "use method 'reference' (--method reference) for this model"
        )
    inner = decoder_model(model)
    parts = {
        "embed": getattr(inner, "embed_tokens", None),
        "norm": getattr(inner, "norm", None),
        "rotary": getattr(inner, "rotary_emb", None),
        "lm_head": model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None,
    }
    missing = [k for k, v in parts.items() if v is None]
    if missing or not all(hasattr(layer, "post_attention_layernorm") for layer in layers):
        raise _unsupported(model, f"missing {', '.join(missing) or 'post_attention_layernorm'}")
    return DecoderParts(layers=layers, **parts)
