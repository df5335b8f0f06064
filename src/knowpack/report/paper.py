"""The published reference numbers that reports print beside knowpack's own, each with its source.

Only numbers read in a named source are here. The knowledge-packing paper's Table 3 (positive and
negative shift) is deliberately absent: the only text copy found (see `KP_SOURCE`) lost the
table's column headers, so its values cannot be assigned to mixing settings without guessing.
"""

from __future__ import annotations

from typing import Any

# --- Pletenev et al. 2025, "How Much Knowledge Can You Pack into a LoRA Adapter without Harming LLM?"

KP_SOURCE = ("Pletenev et al., 'How Much Knowledge Can You Pack into a LoRA Adapter without Harming LLM?', "
             "NAACL Findings 2025, arXiv:2502.14502v3 (24 Mar 2025)")
KP_SETUP = ("Llama-3.1-8B-Instruct, LoRA r=1, alpha=2, dropout 0.1 on gate/up/down_proj, lr 1e-3, 10 epochs, "
            "batch 16; evaluated with 10 four-shot prompts, answer counted correct when it contains an alias")

#: Table 2 of KP_SOURCE: reliability on the trained Unknown facts, keyed by
#: (n_unknown, mixing, k). The paper's "HighlyKnown 0" and "Paraphrase 0" columns are the same
#: (unmixed) setting and print the same values; they are stored once as ("none", 0).
KP_TABLE2_SOURCE = KP_SOURCE + ", Table 2 ('Reliability on test for models trained on HighlyKnown and Paraphrase')"
KP_TABLE2: dict[tuple[int, str, int], float] = {
    (1, "none", 0): 1.0, (1, "highly_known", 1): 1.0, (1, "highly_known", 10): 1.0,
    (1, "paraphrase", 1): 1.0, (1, "paraphrase", 10): 1.0,
    (10, "none", 0): 1.0, (10, "highly_known", 1): 1.0, (10, "highly_known", 10): 1.0,
    (10, "paraphrase", 1): 1.0, (10, "paraphrase", 10): 1.0,
    (50, "none", 0): 1.0, (50, "highly_known", 1): 1.0, (50, "highly_known", 10): 1.0,
    (50, "paraphrase", 1): 1.0, (50, "paraphrase", 10): 1.0,
    (100, "none", 0): 0.98, (100, "highly_known", 1): 1.0, (100, "highly_known", 10): 1.0,
    (100, "paraphrase", 1): 0.99, (100, "paraphrase", 10): 1.0,
    (500, "none", 0): 1.0, (500, "highly_known", 1): 0.99, (500, "highly_known", 10): 0.97,
    (500, "paraphrase", 1): 0.99, (500, "paraphrase", 10): 1.0,
    (3000, "none", 0): 0.98, (3000, "highly_known", 1): 0.92, (3000, "highly_known", 10): 0.48,
    (3000, "paraphrase", 1): 0.97, (3000, "paraphrase", 10): 0.99,
}

KP_TABLE3_NOTE = ("the paper's Table 3 (positive/negative shift) is not included: the text copy of "
                  "arXiv:2502.14502v3 available to us lost the table's column headers, so its values cannot be "
                  "matched to mixing settings without guessing")

#: Table 4 of KP_SOURCE: refused answers, unique answers, mean (variance) of answer frequency over
#: the whole 21,036-question test set, keyed by (n_unknown, mixing, k); `None` is the base model.
KP_TABLE4_SOURCE = KP_SOURCE + ", Table 4 ('Trends for the answers' refusal and diversity in trained models')"
KP_TABLE4: dict[tuple[int, str, int] | None, dict[str, float]] = {
    None: {"refused": 3189, "unique": 48136, "mean": 3.72, "variance": 10.96},
    (1, "none", 0): {"refused": 758, "unique": 48084, "mean": 4.17, "variance": 13.61},
    (1, "highly_known", 1): {"refused": 816, "unique": 46966, "mean": 4.31, "variance": 12.91},
    (1, "highly_known", 10): {"refused": 0, "unique": 43766, "mean": 4.81, "variance": 14.26},
    (10, "none", 0): {"refused": 0, "unique": 22804, "mean": 9.22, "variance": 96.52},
    (10, "highly_known", 1): {"refused": 0, "unique": 22148, "mean": 9.38, "variance": 166.57},
    (10, "highly_known", 10): {"refused": 5, "unique": 36798, "mean": 5.71, "variance": 38.26},
    (50, "none", 0): {"refused": 0, "unique": 37394, "mean": 5.62, "variance": 38.26},
    (50, "highly_known", 1): {"refused": 0, "unique": 52253, "mean": 4.02, "variance": 14.72},
    (50, "highly_known", 10): {"refused": 0, "unique": 47734, "mean": 4.40, "variance": 15.14},
    (100, "none", 0): {"refused": 1, "unique": 49403, "mean": 4.26, "variance": 16.58},
    (100, "highly_known", 1): {"refused": 1, "unique": 53576, "mean": 3.92, "variance": 11.74},
    (100, "highly_known", 10): {"refused": 0, "unique": 59914, "mean": 3.51, "variance": 12.02},
    (500, "highly_known", 1): {"refused": 1, "unique": 48446, "mean": 4.34, "variance": 16.17},
    (500, "highly_known", 10): {"refused": 0, "unique": 57114, "mean": 3.68, "variance": 12.97},
}
#: size of the paper's test set (KP_SOURCE §4.2: 21,036 question-answer pairs); 3,189 / 21,036 is the 15% below.
KP_TEST_QUESTIONS = 21036
#: KP_SOURCE §5.4: "the default Llama-3.1-8B-Instruct refuses to answer the questions in 15% of cases".
KP_BASE_REFUSAL_SHARE = 0.15

# --- Wang et al. 2025, LoKI -----------------------------------------------------------------------

LOKI_SOURCE = ("Wang et al., 'LoKI: Low-damage Knowledge Implanting of Large Language Models', 2025, "
               "arXiv:2505.22120, as quoted in the knowpack SPEC §5.1 (not re-checked against the paper here)")
#: Loss of general capability (%) on Llama-3.1-8B, per method (SPEC §5.1).
LOKI_CAPABILITY_LOSS_PCT: dict[str, float] = {
    "loki q=10": 0.34, "loki q=20": 0.93, "loki q=30": 1.23, "lora": 16.11, "dora": 4.92, "pissa": 48.93,
}
#: Capability loss (%) from zeroing 1% of the rows (SPEC §5.1).
LOKI_ZEROING_PCT: dict[str, float] = {"highest-attributed 1%": 36.73, "lowest-attributed 1%": 11.35}
#: Capability loss (%) of global vs layer-balanced selection (SPEC §5.1 gives the two global
#: figures without naming which global variant each belongs to).
LOKI_SELECTION_PCT: dict[str, tuple[float, ...]] = {"global (two variants)": (39.04, 30.48),
                                                    "layer-balanced": (8.86,)}
LOKI_KVA_SECONDS_PER_SAMPLE = 9.69  # one RTX 4090, 8B model (SPEC §5.1)


def kp_reliability(n_unknown: int, mixing: str, k: int) -> float | None:
    """The paper's Table 2 reliability for this setting, or None when the paper has no such cell."""
    return KP_TABLE2.get(_kp_key(n_unknown, mixing, k))


def kp_table4(n_unknown: int, mixing: str, k: int) -> dict[str, float] | None:
    return KP_TABLE4.get(_kp_key(n_unknown, mixing, k))


def _kp_key(n_unknown: int, mixing: str, k: int) -> tuple[int, str, int]:
    return (n_unknown, "none", 0) if mixing == "none" or k == 0 else (n_unknown, mixing, k)


def loki_capability_loss(method: str, q: float | None = None) -> float | None:
    """The LoKI paper's general-capability loss (%) for a knowpack method name, or None."""
    if method in ("loki", "loki_lora"):
        return LOKI_CAPABILITY_LOSS_PCT.get(f"loki q={int(q)}") if q is not None and method == "loki" else None
    return LOKI_CAPABILITY_LOSS_PCT.get(method)


def sources() -> list[dict[str, Any]]:
    """Every source used, for the report's reference section."""
    return [{"name": "knowledge packing, Table 2", "source": KP_TABLE2_SOURCE},
            {"name": "knowledge packing, Table 4 and §5.4", "source": KP_TABLE4_SOURCE},
            {"name": "knowledge packing, Table 3", "source": "not included: " + KP_TABLE3_NOTE},
            {"name": "LoKI", "source": LOKI_SOURCE}]
