"""The published reference numbers that reports print beside knowpack's own, each with its source.

Only numbers read in a named source are here; every constant names the table or section it comes
from, what it measures, and on which model and task. Copies read (all checked against each other
where more than one holds the figure):

Knowledge packing (Pletenev et al.):
  [KP-pdf]  a text copy of the arXiv:2502.14502v3 PDF (https://arxiv.org/abs/2502.14502v3); all
            tables, but Table 3 lost its column headers in the extraction;
  [KP-html] the arXiv HTML tables (arxiv.org/html/2502.14502, page dated 20 Feb 2025, so presumably
            v1) as reproduced on
            https://ai-paper-reviewer.com/2502.14502/ (source: github.com/deep-diver/ai-paper-reviewer,
            content/paper-reviews/2502.14502/index.md, plus its Korean-language twin): Tables 1-4 with
            their headers; Table 7 only as a caption;
  [KP-nb]   the authors' analysis notebook,
            https://github.com/AIRI-Institute/knowledge-packing/blob/051757afaa7a00e4bd1dd5aab8ef8152477c3257/notebooks/Knowledge_spillovers_analysis.ipynb
            (how Table 4 and the "exploded" answers were computed, with saved outputs for 1 UK + 10 HK).
LoKI (Wang et al.):
  [LoKI-md] the AAAI-26 text in the authors' repository,
            https://github.com/Nexround/LoKI/blob/725fba31ce331900091496171092171248988fd3/paper_md.md
            (its opening matches https://arxiv.org/html/2505.22120v2); Tables 1-5, main text.
"""

from __future__ import annotations

from typing import Any

# --- Pletenev et al. 2025, "How Much Knowledge Can You Pack into a LoRA Adapter without Harming LLM?"

KP_SOURCE = ("Pletenev et al., 'How Much Knowledge Can You Pack into a LoRA Adapter without Harming LLM?', "
             "Findings of NAACL 2025, pp. 4309-4322 (https://aclanthology.org/2025.findings-naacl.243/); "
             "figures read in arXiv:2502.14502v3 (24 Mar 2025, https://arxiv.org/abs/2502.14502v3) and its "
             "HTML tables (https://ai-paper-reviewer.com/2502.14502/)")
#: §4.2 of KP_SOURCE ("LoRA training", "Evaluation"). The authors' notebook names its model
#: "..._lora1_onlyproj_bs8_LR0.001_seed2_...", i.e. batch 8 in the run it analyses; the paper says 16.
KP_SETUP = ("Llama-3.1-8B-Instruct, LoRA r=1, alpha=2, dropout 0.1 on gate/up/down_proj, lr 1e-3, 10 epochs, "
            "batch 16; evaluated with 10 four-shot prompts, answer counted correct when it contains an alias")

#: Table 2 of KP_SOURCE ("Reliability on test for models trained on HighlyKnown and Paraphrase"):
#: share of the trained Unknown facts answered correctly, Llama-3.1-8B-Instruct + LoRA, keyed by
#: (n_unknown, mixing, k). Every cell checked in [KP-html] (headers "Highly Known 0/1/10",
#: "Paraphrase 0/1/10", rows "UK" 1...3,000) and [KP-pdf]; all agree. The two "0" columns are the same
#: unmixed setting and print the same values; they are stored once as ("none", 0).
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

#: Table 3 of KP_SOURCE ("Positive and negative shifts"): share of test facts whose knowledge
#: category moved up (positive: UK→HK, UK→MK, MK→HK) or down (negative: HK→UK, HK→MK, MK→UK) after
#: training, §5.2; the paper uses three categories (no WeaklyKnown) and does not state the denominator.
#: Keyed by (n_unknown, mixing, k). Column headers "0", "1 HK", "1 Paraphrase", "10 HK", "10 Paraphrase"
#: read in [KP-html] (HTML cell order and the Korean twin's markdown header agree); the values are the
#: same, in the same order, in [KP-pdf], whose extraction lost the headers.
KP_TABLE3_SOURCE = KP_SOURCE + ", Table 3 ('Positive and negative shifts'), column headers from the HTML copy"
KP_TABLE3: dict[tuple[int, str, int], dict[str, float]] = {
    (1, "none", 0): {"positive": 0.034, "negative": 0.053},
    (1, "highly_known", 1): {"positive": 0.036, "negative": 0.054},
    (1, "paraphrase", 1): {"positive": 0.029, "negative": 0.056},
    (1, "highly_known", 10): {"positive": 0.056, "negative": 0.118},
    (1, "paraphrase", 10): {"positive": 0.045, "negative": 0.067},
    (10, "none", 0): {"positive": 0.021, "negative": 0.245},
    (10, "highly_known", 1): {"positive": 0.051, "negative": 0.181},
    (10, "paraphrase", 1): {"positive": 0.049, "negative": 0.154},
    (10, "highly_known", 10): {"positive": 0.068, "negative": 0.158},
    (10, "paraphrase", 10): {"positive": 0.038, "negative": 0.187},
    (50, "none", 0): {"positive": 0.06, "negative": 0.148},
    (50, "highly_known", 1): {"positive": 0.071, "negative": 0.138},
    (50, "paraphrase", 1): {"positive": 0.069, "negative": 0.159},
    (50, "highly_known", 10): {"positive": 0.078, "negative": 0.16},
    (50, "paraphrase", 10): {"positive": 0.07, "negative": 0.174},
    (100, "none", 0): {"positive": 0.067, "negative": 0.172},
    (100, "highly_known", 1): {"positive": 0.083, "negative": 0.151},
    (100, "paraphrase", 1): {"positive": 0.078, "negative": 0.154},
    (100, "highly_known", 10): {"positive": 0.071, "negative": 0.181},
    (100, "paraphrase", 10): {"positive": 0.064, "negative": 0.204},
    (500, "none", 0): {"positive": 0.096, "negative": 0.195},
    (500, "highly_known", 1): {"positive": 0.1, "negative": 0.191},
    (500, "paraphrase", 1): {"positive": 0.105, "negative": 0.194},
    (500, "highly_known", 10): {"positive": 0.089, "negative": 0.213},
    (500, "paraphrase", 10): {"positive": 0.076, "negative": 0.25},
    (3000, "none", 0): {"positive": 0.222, "negative": 0.235},
    (3000, "highly_known", 1): {"positive": 0.229, "negative": 0.202},
    (3000, "paraphrase", 1): {"positive": 0.222, "negative": 0.23},
    (3000, "highly_known", 10): {"positive": 0.163, "negative": 0.149},
    (3000, "paraphrase", 10): {"positive": 0.213, "negative": 0.253},
}
# As printed. The caption marks the lowest negative shift per UK block in red; for 50 UK the red mark
# sits on 0.16 (10 HK) although 0.138 (1 HK) is lower.
KP_TABLE3_NOTE = ("LoRA cells carry the paper's Table 3 value for the same setting in brackets (Llama-3.1-8B-Instruct, "
                  "three knowledge categories, no WeaklyKnown; the paper does not state the denominator of its shares)")

#: Table 4 of KP_SOURCE ("Trends for the answers' refusal and diversity in trained models"), keyed
#: by (n_unknown, mixing, k); `None` is the base model ("Default"). Every cell checked in [KP-html]
#: and [KP-pdf]; they agree (both print 38.26 for 10 UK + 10 HK and for 50 UK + 0 HK). The paper has no
#: paraphrase rows, no 500 UK + 0 HK row and no 3,000 UK rows. Fields, per [KP-nb]:
#:  refused: test questions whose *first* greedy answer contains "information" (the notebook's
#:           `("information" or "verify") in answer` tests "information" only); base 3,189 of 21,036
#:           questions is the 15% of §5.4;
#:  unique:  distinct answer strings among the greedy answers to all 10 four-shot prompts of every
#:           test question, refusals left out (so over at most 21,036 × 10 = 210,360 answers);
#:  mean, std: mean and *standard deviation* (numpy's np.std, population) of how often each distinct
#:           answer occurs. The paper's column header literally reads "Mean (Variance)", but the
#:           notebook prints "After, std" and its saved output for 1 UK + 10 HK (43,766 unique, mean
#:           4.8057, std 14.2622) is that Table 4 row, and a variance would be impossible: for 10 UK +
#:           0 HK, mean 9.22 over 22,804 distinct answers with one answer ("Alençon") given 9,393 times
#:           (§5.4) forces a variance of at least (9,393 − 9.22)² / 22,804 ≈ 3,861, not 96.52.
KP_TABLE4_SOURCE = (KP_SOURCE + ", Table 4 ('Trends for the answers' refusal and diversity in trained models'); "
                    "the column the paper heads 'Mean (Variance)' holds a standard deviation (authors' notebook)")
KP_TABLE4: dict[tuple[int, str, int] | None, dict[str, float]] = {
    None: {"refused": 3189, "unique": 48136, "mean": 3.72, "std": 10.96},
    (1, "none", 0): {"refused": 758, "unique": 48084, "mean": 4.17, "std": 13.61},
    (1, "highly_known", 1): {"refused": 816, "unique": 46966, "mean": 4.31, "std": 12.91},
    (1, "highly_known", 10): {"refused": 0, "unique": 43766, "mean": 4.81, "std": 14.26},
    (10, "none", 0): {"refused": 0, "unique": 22804, "mean": 9.22, "std": 96.52},
    (10, "highly_known", 1): {"refused": 0, "unique": 22148, "mean": 9.38, "std": 166.57},
    (10, "highly_known", 10): {"refused": 5, "unique": 36798, "mean": 5.71, "std": 38.26},
    (50, "none", 0): {"refused": 0, "unique": 37394, "mean": 5.62, "std": 38.26},
    (50, "highly_known", 1): {"refused": 0, "unique": 52253, "mean": 4.02, "std": 14.72},
    (50, "highly_known", 10): {"refused": 0, "unique": 47734, "mean": 4.40, "std": 15.14},
    (100, "none", 0): {"refused": 1, "unique": 49403, "mean": 4.26, "std": 16.58},
    (100, "highly_known", 1): {"refused": 1, "unique": 53576, "mean": 3.92, "std": 11.74},
    (100, "highly_known", 10): {"refused": 0, "unique": 59914, "mean": 3.51, "std": 12.02},
    (500, "highly_known", 1): {"refused": 1, "unique": 48446, "mean": 4.34, "std": 16.17},
    (500, "highly_known", 10): {"refused": 0, "unique": 57114, "mean": 3.68, "std": 12.97},
}
#: KP_SOURCE §4.2 ("Train-test splits"): 21,036 question-answer pairs form the test set;
#: 3,189 / 21,036 is the 15% below. (The notebook's merged frame has 21,039 rows.)
KP_TEST_QUESTIONS = 21036
#: Greedy answers scored per model: 10 four-shot prompts × 21,036 questions ([KP-nb]: the evaluation
#: dataset has 210,360 rows). The pool over which Table 4 counts answer frequencies (less refusals).
KP_TEST_ANSWERS = 210360
#: KP_SOURCE §5.4: "the default Llama-3.1-8B-Instruct refuses to answer the questions in 15% of cases".
KP_BASE_REFUSAL_SHARE = 0.15
#: KP_SOURCE §5.4: most frequent answer and its count — base model "Animalia" 661 cases; for
#: "the aforementioned configurations" (10 UK + 0 HK and 10 UK + 1 HK, named together, one figure)
#: "Alençon" 9,393 cases.
KP_TOP_ANSWERS: dict[tuple[int, str, int] | None, tuple[str, int]] = {
    None: ("Animalia", 661), (10, "none", 0): ("Alençon", 9393), (10, "highly_known", 1): ("Alençon", 9393)}
#: "Exploded" answers. The paper gives no number; its wording (v3, under Table 5): "The exploded
#: answer is the one to which the model converges in percentage of cases considerably higher than
#: expected by the default model". The threshold is in [KP-nb], cell "Exploded":
#: `{k: v for k, v in div_set_after_dict.items() if v > 850}` — an answer string given more than 850
#: times among the trained model's non-refused greedy answers to all 10 prompts of all test questions
#: (at most KP_TEST_ANSWERS = 210,360), i.e. above about 0.40% of that pool.
KP_EXPLODED_MIN_COUNT = 850
KP_EXPLODED_SHARE = KP_EXPLODED_MIN_COUNT / KP_TEST_ANSWERS

#: Table 7 of KP_SOURCE (Appendix A, "Accuracy for MMLU and a range of metrics for ThruthfulQA for
#: all trained LoRA adapters"): lm-evaluation-harness, MMLU 5-shot accuracy, TruthfulQA 0-shot MC1
#: and MC2 accuracy (§3.4). Base model row (Llama-3.1-8B-Instruct), all columns of the table.
#: Read in [KP-pdf] only ([KP-html] reproduces the caption, not the cells).
KP_BASE_BENCHMARKS: dict[str, float] = {
    "mmlu": 0.677, "mmlu_std": 0.004, "truthfulqa_bleu": 35.780, "truthfulqa_rouge1": 60.325,
    "truthfulqa_rouge2": 47.789, "truthfulqa_rougeL": 58.512, "truthfulqa_mc1": 0.382, "truthfulqa_mc2": 0.552,
}
#: Table 7, trained adapters, keyed by (n_unknown, mixing, k): MMLU accuracy, TruthfulQA MC1, MC2.
#: The "+ 0 HK" and "+ 0 Paraphrase" rows print the same values and are stored once as ("none", 0).
#: Every MMLU row reports std 0.004. One copy read ([KP-pdf]); BLEU/ROUGE columns left out.
KP_TABLE7_SOURCE = KP_SOURCE + ", Table 7 (Appendix A: MMLU 5-shot and TruthfulQA 0-shot, lm-evaluation-harness)"
KP_TABLE7: dict[tuple[int, str, int], tuple[float, float, float]] = {
    (1, "none", 0): (0.682, 0.359, 0.533), (1, "highly_known", 1): (0.681, 0.361, 0.538),
    (1, "highly_known", 10): (0.672, 0.322, 0.478), (1, "paraphrase", 1): (0.681, 0.365, 0.537),
    (1, "paraphrase", 10): (0.674, 0.356, 0.535),
    (10, "none", 0): (0.615, 0.305, 0.481), (10, "highly_known", 1): (0.627, 0.310, 0.451),
    (10, "highly_known", 10): (0.653, 0.319, 0.490), (10, "paraphrase", 1): (0.610, 0.343, 0.527),
    (10, "paraphrase", 10): (0.624, 0.332, 0.495),
    (50, "none", 0): (0.660, 0.306, 0.482), (50, "highly_known", 1): (0.675, 0.313, 0.494),
    (50, "highly_known", 10): (0.658, 0.282, 0.448), (50, "paraphrase", 1): (0.670, 0.344, 0.517),
    (50, "paraphrase", 10): (0.668, 0.337, 0.511),
    (100, "none", 0): (0.663, 0.304, 0.474), (100, "highly_known", 1): (0.669, 0.315, 0.482),
    (100, "highly_known", 10): (0.659, 0.277, 0.452), (100, "paraphrase", 1): (0.675, 0.334, 0.507),
    (100, "paraphrase", 10): (0.659, 0.337, 0.511),
    (500, "none", 0): (0.649, 0.290, 0.447), (500, "highly_known", 1): (0.655, 0.297, 0.460),
    (500, "highly_known", 10): (0.554, 0.296, 0.463), (500, "paraphrase", 1): (0.653, 0.322, 0.472),
    (500, "paraphrase", 10): (0.566, 0.343, 0.512),
    (3000, "none", 0): (0.579, 0.294, 0.461), (3000, "highly_known", 1): (0.623, 0.257, 0.420),
    (3000, "highly_known", 10): (0.554, 0.263, 0.445), (3000, "paraphrase", 1): (0.605, 0.319, 0.502),
    (3000, "paraphrase", 10): (0.441, 0.305, 0.491),
}

# --- Wang et al. 2025, LoKI -----------------------------------------------------------------------

LOKI_SOURCE = ("Wang et al., 'LoKI: Low-damage Knowledge Implanting of Large Language Models', AAAI-26, "
               "Proc. AAAI 40(39):33620-33628 (https://doi.org/10.1609/aaai.v40i39.40651), arXiv:2505.22120 "
               "(https://arxiv.org/abs/2505.22120); figures read in the AAAI text in the authors' repository "
               "(https://github.com/Nexround/LoKI/blob/725fba31ce331900091496171092171248988fd3/paper_md.md)")
#: What every LoKI "loss of general capability" figure is (LOKI_SOURCE, "Measuring Catastrophic
#: Forgetting"): Avg = 100/N · Σ_i (S_o,i − S_t,i) / S_o,i, the mean *relative* drop of the fine-tuned
#: model against its own untuned base over N = 6 benchmarks, run on OpenCompass. knowpack's
#: per-benchmark "relative drop %" is comparable with one term of this mean, not with the mean.
LOKI_CAPABILITY_BENCHMARKS = ("TriviaQA", "GSM8K", "HellaSwag", "WinoGrande", "HumanEval", "IFEval")
LOKI_CAPABILITY_DEFINITION = ("mean relative drop (%) against the untuned base over TriviaQA, GSM8K, HellaSwag, "
                              "WinoGrande, HumanEval and IFEval (OpenCompass)")

#: Table 2 of LOKI_SOURCE ("Benchmark scores of models fine-tuned on ToolACE Function-Calling
#: Dataset"), column Avg(↓): Llama-3.1-8B-Instruct fine-tuned on ToolACE. "lora" is the row
#: "ToolACE(r=16)", the official ToolACE model trained with LoRA r=16 by the dataset's authors, not a
#: run of the LoKI authors; DoRA and PiSSA are r=16; "loki_lora q=30" is the row LoKI*(q=30, r=32).
#: Checked against the text: "the degradation is as small as 1.23%" for LoKI(q=30), and "reduces the
#: average performance degradation percentage by 75%" against DoRA (1 − 1.23/4.92 = 0.75).
#: Caveat, as printed: recomputing Avg from the table's own per-benchmark scores (LOKI_TOOLACE_SCORES)
#: reproduces every row except that q=20 gives 1.23% and q=30 gives 0.93% — the two Avg entries (or
#: the two score rows) are swapped in the paper. The printed Avg values are kept here.
LOKI_CAPABILITY_LOSS_PCT: dict[str, float] = {
    "loki q=10": 0.34, "loki q=20": 0.93, "loki q=30": 1.23, "loki_lora q=30": 1.26,
    "lora": 16.11, "dora": 4.92, "pissa": 48.93,
}
#: Table 2 of LOKI_SOURCE, per-benchmark scores (TriviaQA, GSM8K, HellaSwag, WinoGrande, HumanEval,
#: IFEval), Llama-3.1-8B-Instruct; "base" is the row "Llama3.1 (untuned)".
LOKI_TOOLACE_SCORES: dict[str, tuple[float, ...]] = {
    "base": (65.77, 84.46, 73.85, 62.98, 68.29, 79.76),
    "lora": (64.63, 79.53, 46.81, 42.78, 60.37, 72.76),
    "dora": (63.97, 82.64, 70.78, 57.85, 65.24, 73.47),
    "pissa": (52.50, 51.40, 37.98, 13.18, 15.85, 55.95),
    "loki q=10": (65.85, 84.99, 75.14, 61.33, 68.90, 77.54),
    "loki q=20": (65.60, 84.31, 73.60, 60.62, 67.68, 78.18),
    "loki q=30": (65.49, 84.61, 71.16, 61.09, 70.73, 77.94),
    "loki_lora q=30": (64.30, 83.47, 70.78, 62.51, 70.12, 78.21),
}
#: Table 4 of LOKI_SOURCE ("Benchmark scores of models fine-tuned on the LB Reranker Dataset"),
#: column Avg(↓): Qwen2.5-0.5B-Instruct fine-tuned on LB Reranker. "full (LB-Reranker)" is the
#: full-parameter fine-tune released by the dataset's provider; DoRA, PiSSA, CorDA are r=8.
#: Recomputing Avg from the row scores reproduces every entry. This table is where the alphaXiv
#: summary's "only 0.46% general capability degradation compared to over 84% for full fine-tuning"
#: (https://www.alphaxiv.org/overview/2505.22120) comes from: LoKI q=30 0.46% vs LB-Reranker 84.13%.
LOKI_RERANKER_CAPABILITY_LOSS_PCT: dict[str, float] = {
    "full (LB-Reranker)": 84.13, "dora": 12.23, "pissa": 48.95, "corda": 84.22,
    "loki q=5": 6.12, "loki q=10": 8.86, "loki q=20": 1.70, "loki q=30": 0.46,
}
#: Table 5a of LOKI_SOURCE ("Ablation Studies: Validation of KVA"): Llama-3.1-8B-Instruct, no fine-tuning,
#: the q=1% knowledge vectors most often attributed highest (S-H) or lowest (S-L) zeroed, loss of
#: general capability on the same six benchmarks. The text: "the performance gap between the two
#: suppression strategies is 25.38%" (= 36.73 − 11.35).
LOKI_ZEROING_PCT: dict[str, float] = {"highest-attributed 1% (S-H)": 36.73, "lowest-attributed 1% (S-L)": 11.35}
#: Table 5b of LOKI_SOURCE ("Validation of Layer-Balanced Strategy"): Qwen2.5-0.5B-Instruct fine-tuned
#: on LB Reranker with q=10, loss of general capability on the same six benchmarks. G-H / G-L: the top
#: q% vectors across all layers most often attributed highest / lowest made trainable. (Not Llama: the
#: knowpack SPEC §5.1 lists these beside the Llama figures without saying so.) 8.86% is LoKI q=10 of
#: Table 4.
LOKI_SELECTION_PCT: dict[str, tuple[float, ...]] = {
    "Qwen2.5-0.5B-Instruct, LB Reranker, q=10: global highest-attributed (G-H)": (39.04,),
    "Qwen2.5-0.5B-Instruct, LB Reranker, q=10: global lowest-attributed (G-L)": (30.48,),
    "Qwen2.5-0.5B-Instruct, LB Reranker, q=10: layer-balanced lowest-attributed (LoKI)": (8.86,),
}
#: LOKI_SOURCE, "Analysing" / "Scoring Knowledge Vectors": KVA "executed on an RTX4090 GPU using
#: Llama3.1-8B-Instruct ... takes an average of 9.69 seconds per sample" on the reduced MMLU set;
#: the layer-balanced selection from that set overlaps the full-MMLU selection by 97.57%.
LOKI_KVA_SECONDS_PER_SAMPLE = 9.69
LOKI_KVA_OVERLAP_PCT = 97.57


def kp_reliability(n_unknown: int, mixing: str, k: int) -> float | None:
    """The paper's Table 2 reliability for this setting, or None when the paper has no such cell."""
    return KP_TABLE2.get(_kp_key(n_unknown, mixing, k))


def kp_table4(n_unknown: int, mixing: str, k: int) -> dict[str, float] | None:
    return KP_TABLE4.get(_kp_key(n_unknown, mixing, k))


def _kp_key(n_unknown: int, mixing: str, k: int) -> tuple[int, str, int]:
    return (n_unknown, "none", 0) if mixing == "none" or k == 0 else (n_unknown, mixing, k)


def kp_shift(n_unknown: int, mixing: str, k: int) -> dict[str, float] | None:
    """The paper's Table 3 positive / negative shift for this setting, or None when it has no such cell."""
    return KP_TABLE3.get(_kp_key(n_unknown, mixing, k))


def kp_benchmarks(n_unknown: int, mixing: str, k: int) -> dict[str, float] | None:
    """The paper's Table 7 MMLU / TruthfulQA MC1 / MC2 accuracy for this setting, or None."""
    row = KP_TABLE7.get(_kp_key(n_unknown, mixing, k))
    return None if row is None else dict(zip(("mmlu", "truthfulqa_mc1", "truthfulqa_mc2"), row))


def loki_capability_loss(method: str, q: float | None = None) -> float | None:
    """The LoKI paper's general-capability loss (%) on Llama-3.1-8B-Instruct after ToolACE fine-tuning
    (Table 2) for a knowpack method name, or None. `loki_lora` has a figure only for q=30 (the paper's
    LoKI* with r=32); `full` has none (the paper fine-tuned Llama fully on neither task)."""
    if method in ("loki", "loki_lora"):
        return None if q is None else LOKI_CAPABILITY_LOSS_PCT.get(f"{method} q={int(q)}")
    return LOKI_CAPABILITY_LOSS_PCT.get(method)


def loki_reference_rows() -> list[list[str]]:
    """The LoKI paper's figures as rows: setting, model and task, where in the paper, value."""
    llama, qwen = "Llama-3.1-8B-Instruct, ToolACE", "Qwen2.5-0.5B-Instruct, LB Reranker"
    names = {"lora": "LoRA r=16 (official ToolACE model)", "dora": "DoRA r=16", "pissa": "PiSSA r=16",
             "loki_lora q=30": "LoKI* q=30, r=32 (LoRA on the selected rows)"}
    rows = [[names.get(k, k.replace("loki", "LoKI")), llama, "Table 2, Avg", f"{v:.2f}%"]
            for k, v in LOKI_CAPABILITY_LOSS_PCT.items()]
    rerank = {"full (LB-Reranker)": "full fine-tuning (the provider's LB-Reranker)", "dora": "DoRA r=8",
              "pissa": "PiSSA r=8", "corda": "CorDA r=8"}
    rows += [[rerank.get(k, k.replace("loki", "LoKI")), qwen, "Table 4, Avg", f"{v:.2f}%"]
             for k, v in LOKI_RERANKER_CAPABILITY_LOSS_PCT.items()]
    rows += [[f"zeroing the {k} rows, no training", "Llama-3.1-8B-Instruct", "Table 5a", f"{v:.2f}%"]
             for k, v in LOKI_ZEROING_PCT.items()]
    rows += [[k.split(": ", 1)[1] + " selection", qwen + ", q=10", "Table 5b", " / ".join(f"{x:.2f}%" for x in v)]
             for k, v in LOKI_SELECTION_PCT.items()]
    rows.append(["KVA time per sample (one RTX 4090)", "Llama-3.1-8B-Instruct, MMLU", "§Analysing",
                 f"{LOKI_KVA_SECONDS_PER_SAMPLE} s"])
    return rows


def sources() -> list[dict[str, Any]]:
    """Every source used, for the report's reference section."""
    return [{"name": "knowledge packing, Table 2", "source": KP_TABLE2_SOURCE},
            {"name": "knowledge packing, Table 3", "source": KP_TABLE3_SOURCE},
            {"name": "knowledge packing, Table 4 and §5.4", "source": KP_TABLE4_SOURCE},
            {"name": "knowledge packing, 'exploded' answers",
             "source": (f"more than {KP_EXPLODED_MIN_COUNT} occurrences among at most {KP_TEST_ANSWERS:,} greedy "
                        f"answers (≈{KP_EXPLODED_SHARE:.2%}), authors' notebook https://github.com/AIRI-Institute/"
                        "knowledge-packing/blob/051757afaa7a00e4bd1dd5aab8ef8152477c3257/notebooks/"
                        "Knowledge_spillovers_analysis.ipynb; the paper itself gives no number")},
            {"name": "knowledge packing, Table 7 (benchmarks)", "source": KP_TABLE7_SOURCE},
            {"name": "LoKI, Tables 2, 4, 5 and §Analysing",
             "source": LOKI_SOURCE + "; general capability = " + LOKI_CAPABILITY_DEFINITION}]
