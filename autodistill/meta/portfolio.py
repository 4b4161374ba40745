"""The fixed portfolio of candidate KD pipelines evaluated on every dataset of the meta-dataset.

Each candidate is a *partial* :class:`~autodistill.config.PipelineConfig` dict (the KD stages only);
:func:`candidate_config` merges it over :data:`META_PRESET` (data cap, length, teacher, student,
optimisation: the same budget for every run) and validates it. Together the candidates cover every
stage and option of the engine: augmenters (random, mask, embedding_neighbour, an ordered pipeline) and
MixKD mixup; the prediction losses kl / soft_ce / mse / annealing at several temperatures; every
intermediate objective (mse, hidden_ce, cos, pkd, infonce, nwj, tuba, mi_alpha at α ∈ {0, 0.5,
0.9}, rail_l, rail_c); every automatic mapping (skip, last, uniform, emd, random); fixed, linear,
cosine and RW-KD weighting; Dynamic KD data selection (entropy, margin, least_confidence, random,
each paired with a weighting schedule) and objective adaptation. References: ``no_kd`` (the student fine-tuned on hard labels only) and
``vanilla_kd`` (the engine's defaults: CE + KL at τ = 1).

Not in the portfolio, on purpose (:data:`EXCLUDED_OPTIONS`): the ``backtranslation`` and ``contextual``
augmenters (need MarianMT models / a masked LM, not available offline), the ``custom`` mapping (user-given layer
pairs, not a method), Dynamic KD teacher ``adoption`` (needs a second teacher: a different budget).

Regression tasks (:func:`adapt_for_task`): kl/soft_ce become logit mse (same temperature);
candidates that need class probabilities (RW-KD, Dynamic KD) are not applicable and are skipped.
"""
from __future__ import annotations

import copy
import json
from typing import Any, Mapping

from ..config import PipelineConfig, deep_merge, parse_config, pipeline_only
from ..records import canonical_config_hash

# v3 (2026-12-02, with build 2): 27 candidates. From v1's 37: dropped aug_contextual and
# aug_contextual_random (the contextual augmenter and the ordered pipeline stay covered by
# aug_contextual_random_mixup_mi0.9; at ~5 min a run they were a quarter of the build), mi_alpha_1_skip
# (I_alpha at alpha = 1 is InfoNCE's bound with a baseline), mi_alpha_0.9_last / _emd and inter_mse_skip
# (the last / emd / uniform mappings moved onto pkd / mse / cos); Dynamic KD's selections paired with
# the fixed / linear / cosine schedules and objective adaptation instead of running alone.
PORTFOLIO_VERSION = 4  # v4 (issue 18): aug_contextual_random_mixup_mi0.9 renamed aug_neighbour_random_mixup_mi0.9

# One run ~ 1 minute on 2 CPU cores: a 2-layer student cut from the default MiniLM-L6 teacher trains
# ~80 examples/s at length 64 (measured on this 2-core machine), so 1,000 rows x 2 epochs ~ 25 s of training, plus
# teacher outputs (~10 s), evaluation and loading. The teacher (3 epochs on the same 1,000 rows) is
# fine-tuned once per dataset and cached. The dev slice is split by row, as the v1 and v2 records ran
# (data.dev_split came later; the product's default splits by text).
META_PRESET: dict[str, Any] = {
    "data": {"max_train_examples": 1000, "max_length": 64, "split_seed": 42, "dev_split": "row"},
    "teachers": [{"backbone": "default", "epochs": 3.0, "batch_size": 32, "learning_rate": 5e-5, "seed": 42}],
    "student": {"kind": "truncated", "num_layers": 2, "layer_selection": "uniform"},
    "optim": {"epochs": 2.0, "batch_size": 32, "learning_rate": 1e-4, "seed": 42, "evals_per_epoch": 1,
              "eval_batch_size": 128, "device": "cpu"},
}

#: student sizes of the v2 build (a context dimension): the 2-layer student cut from the 6-layer teacher
#: keeps 15.6 M of its 22.7 M parameters (mild compression, where KD matters least); the fresh 4-layer
#: hidden-128 student has 4.8 M (4.7x smaller, ~3x faster per example on CPU; see /work NOTES)
STUDENT_PRESETS: dict[str, dict[str, Any]] = {
    "cut2": {"kind": "truncated", "num_layers": 2, "layer_selection": "uniform"},
    "fresh4x128": {"kind": "fresh", "num_layers": 4, "hidden_size": 128, "num_attention_heads": 4,
                   "intermediate_size": 512},
}

#: the v2 training rule (issue 16), merged over :data:`META_PRESET` for every v2 context: students train
#: until the dev curve is flat (early stopping after 3 evaluations without gain, one per epoch; dev slice
#: = 10 % of the train rows, never the scored validation split; best checkpoint restored), capped at 20
#: epochs and 3,000 steps; teachers likewise (patience 2, cap 10 epochs). Patience counts once the dev
#: score beats the constant prediction's (``early_stopping_start``): the pilot's first runs
#: (``meta_dataset/v2_pilot/rule_*.json``, patience from the first evaluation) stopped fresh students
#: that needed 3-4 epochs to leave the majority class before they began to learn.
CONVERGED_RULE: dict[str, Any] = {
    "teachers": [{"backbone": "default", "epochs": 10.0, "batch_size": 32, "learning_rate": 5e-5, "seed": 42,
                  "early_stopping_patience": 2, "early_stopping_start": "above_trivial"}],
    "optim": {"epochs": 20.0, "early_stopping_patience": 3, "early_stopping_start": "above_trivial", "max_steps": 3000},
}

#: each student preset's learning rate under the converged rule: the fresh student needs a larger one
#: (see NOTES: at 1e-4 it had not converged in 10 epochs), the cut student keeps the teacher's scale
STUDENT_LEARNING_RATES: dict[str, float] = {"cut2": 1e-4, "fresh4x128": 5e-4}

EXCLUDED_OPTIONS: dict[str, dict[str, str]] = {
    "augmenter": {"backtranslation": "needs MarianMT translation models (not available offline)",
                  "contextual": "needs a masked LM (not available offline)"},
    "mapping": {"custom": "user-given layer pairs, not a method"},
    "adoption": {"hard": "needs two teachers", "soft": "needs two teachers",
                 "soft_instance": "needs two teachers"},
}


def _inter(objective: str, mapping: str = "skip", **kw) -> dict[str, Any]:
    return {"loss": {"intermediate": {"objective": objective, "mapping": mapping, **kw}}}


NBR = {"name": "embedding_neighbour", "p": 0.3}
RND = {"name": "random", "p": 0.1}

# Ordered from the references and common recipes to the specialised methods; a dataset's runs go in this order.
PORTFOLIO: dict[str, dict[str, Any]] = {
    "no_kd": {"loss": {"hard_label_weight": 1.0, "prediction": {"weight": 0.0}}},
    "vanilla_kd": {},
    "kd_kl_t4": {"loss": {"prediction": {"type": "kl", "temperature": 4.0}}},
    "mi_alpha_0.9_skip": _inter("mi_alpha", "skip", alpha=0.9),
    # Distiller's AutoDistiller pick on BoolQ, with its contextual (masked LM) augmenter replaced by static
    # embedding neighbours: the same runs as v3's "aug_contextual_random_mixup_mi0.9", renamed in v4
    "aug_neighbour_random_mixup_mi0.9": {
        "augmentation": {"augmenters": [NBR, RND]}, "mixup": {"enabled": True},
        **_inter("mi_alpha", "skip", alpha=0.9)},
    "kd_soft_ce_t2_no_hard": {"loss": {"hard_label_weight": 0.0,
                                       "prediction": {"type": "soft_ce", "temperature": 2.0}}},
    "kd_mse_logits": {"loss": {"prediction": {"type": "mse"}}},
    "kd_annealing": {"loss": {"prediction": {"type": "annealing", "annealing_max_temperature": 7,
                                             "annealing_phase1_fraction": 0.5}}},
    "mixup": {"mixup": {"enabled": True}},
    "aug_random": {"augmentation": {"augmenters": [RND]}},
    "aug_mask": {"augmentation": {"augmenters": [{"name": "mask", "p": 0.15}]}},
    "inter_mse_emd": _inter("mse", "emd"),          # BERT-EMD's many-to-many mapping
    "inter_hidden_ce_skip": _inter("hidden_ce", "skip"),
    "inter_cos_uniform": _inter("cos", "uniform"),
    "inter_pkd_last": _inter("pkd", "last"),         # PKD-Last
    "inter_infonce_skip": _inter("infonce", "skip"),
    "inter_nwj_skip": _inter("nwj", "skip"),
    "inter_tuba_skip": _inter("tuba", "skip"),
    "mi_alpha_0_skip": _inter("mi_alpha", "skip", alpha=0.0),
    "mi_alpha_0.5_skip": _inter("mi_alpha", "skip", alpha=0.5),
    "rail_l_random": _inter("rail_l", "random"),
    "rail_c_random": _inter("rail_c", "random"),
    "rw_kd": {"weighting": {"strategy": "rw_kd"}},
    # Dynamic KD's four selection strategies, each paired with one of the other weighting schedules
    # (and objective adaptation): every option runs, in 4 candidates instead of 8
    "dyn_select_entropy_weight_linear": {"dynamic": {"selection": "entropy", "selection_ratio": 0.5},
                                         "weighting": {"strategy": "linear", "lambda_kd": 0.9, "lambda_end": 0.1}},
    "dyn_select_margin_weight_cosine": {"dynamic": {"selection": "margin", "selection_ratio": 0.5},
                                        "weighting": {"strategy": "cosine", "lambda_kd": 0.9, "lambda_end": 0.1}},
    "dyn_select_least_confidence_weight_fixed_0.5": {
        "dynamic": {"selection": "least_confidence", "selection_ratio": 0.5},
        "weighting": {"strategy": "fixed", "lambda_kd": 0.5}},
    "dyn_select_random_objective_adaptation": {"dynamic": {"selection": "random", "selection_ratio": 0.5,
                                                           "objective_adaptation": True}},
}

REFERENCES = ("no_kd", "vanilla_kd")

# The candidates whose runs compute something different from engine version v on (see
# autodistill.ENGINE_VERSION; measured step loss by step loss with benchmarks/portfolio_engine_diff.py):
# a record of one of them made by an older engine is not a result of the candidate as it runs now, and is
# not mixed with new ones. Engine 2: inter_pkd_last (the `last` mapping's pairs); mixup and
# aug_neighbour_random_mixup_mi0.9 on sentence-pair datasets (MixKD's token types; bitwise the same on
# single sentences; the latter is v3's aug_contextual_random_mixup_mi0.9 renamed). The RW-KD, selection
# and objective-adaptation candidates compute bitwise the same (none combines RW-KD with selection, uses
# a hooked mapping under objective adaptation, or sets prediction.weight != 1 with it).
CHANGED_IN_ENGINE_VERSION: dict[int, frozenset[str]] = {
    2: frozenset({"inter_pkd_last", "mixup", "aug_neighbour_random_mixup_mi0.9"}),
}


def record_is_current(candidate: str, engine_version: int | None) -> bool:
    """Whether a record of ``candidate`` made by engine ``engine_version`` (None: before runs recorded
    it, i.e. 1) computes what the candidate computes now."""
    made_by = engine_version or 1
    return not any(candidate in changed for version, changed in CHANGED_IN_ENGINE_VERSION.items()
                   if version > made_by)



#: candidates renamed since a committed meta-dataset was built: old name -> current name. Their old records
#: ran what the current candidate runs (v3's "contextual" without a masked LM was the static-neighbour
#: augmenter, now ``embedding_neighbour``), so a model fitted on them recommends the current candidate.
RENAMED_CANDIDATES: dict[str, str] = {"aug_contextual_random_mixup_mi0.9": "aug_neighbour_random_mixup_mi0.9"}


def current_candidate(name: str, config: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(name, KD pipeline) as the candidate runs today: a renamed candidate's current name and pipeline
    sections (its old config names an augmenter that cannot run any more); anything else as given."""
    if name in RENAMED_CANDIDATES:
        new = RENAMED_CANDIDATES[name]
        return new, pipeline_only(candidate_config(new))
    return name, pipeline_only(config)

#: the config sections that make a KD pipeline; everything else (data rows and length, teachers, student
#: size, epochs and the rest of ``optim``) is the budget, which comes from the user's data and request
def needs_classification(partial: Mapping[str, Any]) -> bool:
    dyn = partial.get("dynamic", {})
    return partial.get("weighting", {}).get("strategy") == "rw_kd" or dyn.get("selection", "none") != "none" \
        or bool(dyn.get("objective_adaptation")) or dyn.get("adoption", "none") != "none"


def adapt_for_task(partial: Mapping[str, Any], task_type: str) -> dict[str, Any] | None:
    """The candidate as run on a task of ``task_type``; None when it does not apply (see module doc)."""
    out = copy.deepcopy(dict(partial))
    if task_type != "regression":
        return out
    if needs_classification(out):
        return None
    pred = out.get("loss", {}).get("prediction", {})
    if pred.get("type", "kl") in ("kl", "soft_ce"):
        out = deep_merge(out, {"loss": {"prediction": {"type": "mse"}}})
    return out


def duplicate_of(name: str, task_type: str = "classification",
                 preset: Mapping[str, Any] | None = None) -> str | None:
    """The earlier candidate whose config on this task type is the same as ``name``'s (on regression,
    ``kd_mse_logits`` is ``vanilla_kd`` once kl becomes mse): it is run once, under the first name."""
    cfg = candidate_config(name, task_type, preset)
    if cfg is None:
        return None
    key = canonical_config_hash(cfg)
    for other in PORTFOLIO:
        if other == name:
            return None
        other_cfg = candidate_config(other, task_type, preset)
        if other_cfg is not None and canonical_config_hash(other_cfg) == key:
            return other
    raise KeyError(name)


def candidate_config(name: str, task_type: str = "classification", preset: Mapping[str, Any] | None = None,
                     data: Mapping[str, Any] | None = None) -> PipelineConfig | None:
    """The validated config of candidate ``name`` at ``preset`` (default :data:`META_PRESET`) for a task
    type, with ``data`` (e.g. ``{"train": path}``) merged in; None when not applicable to the task."""
    partial = adapt_for_task(PORTFOLIO[name], task_type)
    if partial is None:
        return None
    merged = deep_merge(preset if preset is not None else META_PRESET, partial)
    if data:
        merged = deep_merge(merged, {"data": dict(data)})
    return parse_config(merged, source=f"portfolio candidate {name!r}")


def validate_portfolio(preset: Mapping[str, Any] | None = None) -> dict[str, PipelineConfig]:
    """Every candidate validated (classification and, where applicable, regression); raises ConfigError."""
    out = {}
    for name in PORTFOLIO:
        out[name] = candidate_config(name, "classification", preset)
        candidate_config(name, "regression", preset)
    return out


def resolve_names(spec: str | None) -> list[str]:
    """``all`` / None / a comma-separated list of candidate names, in portfolio order."""
    if spec in (None, "", "all"):
        return list(PORTFOLIO)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in PORTFOLIO]
    if unknown:
        raise KeyError(f"unknown portfolio candidate(s) {unknown}; known: {list(PORTFOLIO)}")
    return [n for n in PORTFOLIO if n in names]


def portfolio_json() -> str:
    return json.dumps({"version": PORTFOLIO_VERSION, "preset": META_PRESET, "candidates": PORTFOLIO}, indent=2)


validate_portfolio()  # fail at import time if a candidate stops validating
