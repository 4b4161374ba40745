"""What the product warm-starts its search from: the meta-model's top-k, or a fixed best-of-k portfolio.

- :func:`candidate_effects` — the fair single best: a candidate's mean centred target (target minus its
  context's mean) over a complete block of contexts and candidates (:func:`complete_block`), so a
  candidate is never helped or hurt by *which* contexts it happens to have (the old single best
  averaged raw targets over whichever datasets a candidate had: skipping a hard dataset looked good).
- :func:`greedy_portfolio` — the k candidates that minimise the mean best-of-k regret over the
  training contexts, chosen greedily (as zero-shot HPO portfolios are: Feurer et al. 2022,
  Auto-sklearn 2.0): step j adds the candidate that lowers ``mean_c (y*_c − max_{p ∈ P} y_c,p)`` most.
- :func:`choose_warm_start` — reads the decision the committed evaluation made
  (:data:`DECISION_FILE` in the model folder, written by ``autodistill meta fit``) and returns the
  warm-start pipelines with the source it used; ``auto`` and the service call it.

The decision rule (:func:`decide`): the meta-model's top-k only when the evaluation's bootstrap CI of
(portfolio's best-of-k regret − meta-model's) lies above 0 and its Wilcoxon p is below 0.05; otherwise the
portfolio, which needs no model to be right on a new dataset.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .portfolio import RENAMED_CANDIDATES
from .table import groups_of

DECISION_FILE = "warm_start.json"
META_MODEL, PORTFOLIO = "meta_model", "portfolio"
PORTFOLIO_FIRST = ("the evaluation did not find the meta-model better than the best-of-k portfolio (bootstrap CI "
                   "of the difference not above 0, or Wilcoxon p not below 0.05): the portfolio's members first (`why.portfolio_member`), then "
                   "the meta-model's ranking")
NO_MEMBER_LEFT = ("the evaluation chose the best-of-k portfolio, but none of its members applies here (the dataset's "
                  "task, the constraints or what the requester may see): the meta-model's ranking")


# --------------------------------------------------------------------------- fair single best
def complete_block(table: pd.DataFrame, min_share: float = 0.5) -> tuple[list[str], list[str]]:
    """(contexts, candidates) of a complete block of the table: every candidate ran on every context.
    Start from all contexts and the candidates they all have; drop, one dataset group at a time (all of
    its contexts together: the train sizes of one dataset lack the same candidates), the group whose
    removal adds most (context x candidate) cells, while that strictly adds cells and at least
    ``min_share`` of the contexts remain. (On ``meta_dataset/runs`` this drops stsb, where six
    classification-only candidates do not run, and keeps all 27 candidates; on v2, both stsb contexts.)"""
    have = table.groupby("dataset")["candidate"].apply(set).to_dict()
    group_of = dict(zip(table["dataset"], groups_of(table)))
    contexts = sorted(have)
    floor = max(1, int(np.ceil(min_share * len(contexts))))

    def common(ctxs: Sequence[str]) -> set:
        return set.intersection(*(have[c] for c in ctxs)) if ctxs else set()

    def cells(ctxs: Sequence[str]) -> int:
        return len(ctxs) * len(common(ctxs)) if len(ctxs) >= floor else -1

    while len(contexts) > floor:
        kept = [[c for c in contexts if group_of[c] != g] for g in sorted({group_of[c] for c in contexts})]
        best = max(kept, key=cells)
        if cells(best) <= cells(contexts):
            break
        contexts = best
    return contexts, sorted(common(contexts))


def candidate_effects(table: pd.DataFrame) -> pd.Series:
    """The fair single best's scores (higher is better): on the :func:`complete_block`, a candidate's
    mean centred target (its target minus the context's mean over the block's candidates) — never a
    mean over whichever contexts a candidate happens to have. Candidates outside the block rank below
    every block candidate, by their mean centred target over the block contexts they ran on."""
    t = table.assign(group=groups_of(table))[["dataset", "group", "candidate", "target"]].dropna()
    contexts, block = complete_block(t)
    t = t[t["dataset"].isin(contexts)]
    level = t[t["candidate"].isin(block)].groupby("dataset")["target"].mean()
    centred = (t["target"] - t["dataset"].map(level)).groupby(t["candidate"]).mean()
    inside = centred[centred.index.isin(block)]
    outside = centred[~centred.index.isin(block)]
    if len(inside) and len(outside):
        outside = outside - outside.max() + inside.min() - 1.0
    return pd.concat([inside, outside]).sort_index()


# --------------------------------------------------------------------------- best-of-k portfolio
def _matrix(table: pd.DataFrame) -> pd.DataFrame:
    return table.pivot_table(index="dataset", columns="candidate", values="target", aggfunc="mean")


def portfolio_regret(matrix: pd.DataFrame, members: Sequence[str]) -> float:
    """Mean over contexts of y* − max over the members the context has; a context with none of them
    counts the expected regret of a random pick."""
    y = matrix.to_numpy(dtype=float)
    best = np.nanmax(y, axis=1)
    fallback = np.nanmean(y, axis=1)
    if not members:
        return float(np.mean(best - fallback))
    got = matrix[list(members)].to_numpy(dtype=float)
    have = np.isfinite(got).any(axis=1)
    picked = np.where(have, np.nanmax(np.where(np.isfinite(got), got, -np.inf), axis=1), fallback)
    return float(np.mean(best - picked))


def greedy_portfolio(table: pd.DataFrame, k: int) -> list[str]:
    """The greedy best-of-k portfolio on ``table``'s contexts (ties: the higher fair-single-best effect,
    then the name, so the result is deterministic)."""
    matrix = _matrix(table)
    effects = candidate_effects(table)
    order = sorted(matrix.columns, key=lambda c: (-effects.get(c, -np.inf), str(c)))
    members: list[str] = []
    for _ in range(min(k, len(order))):
        scored = [(portfolio_regret(matrix, [*members, c]), i, c) for i, c in enumerate(order) if c not in members]
        members.append(min(scored)[2])
    return members


def portfolio_scores(candidates: Sequence[str], members: Sequence[str], effects: pd.Series) -> np.ndarray:
    """A ranking of ``candidates`` as scores: the portfolio's members in their greedy order first, then
    the rest by fair-single-best effect, candidates neither knows last (tied)."""
    rank = {c: len(members) - i for i, c in enumerate(members)}
    lo = float(effects.min()) if len(effects) else 0.0
    hi = float(effects.max()) if len(effects) else 0.0
    out = []
    for c in candidates:
        if c in rank:
            out.append(hi - lo + 1.0 + rank[c])
        elif c in effects.index:
            out.append(float(effects[c]) - lo)
        else:
            out.append(-np.inf)
    return np.asarray(out, dtype=float)


# --------------------------------------------------------------------------- the decision
def shows_a_win(comparison: Mapping[str, Any], alpha: float = 0.05) -> bool:
    """Whether a paired comparison (:func:`autodistill.meta.evaluate.paired_comparison`'s dict) shows the
    method better than its reference: the bootstrap CI of the mean difference lies above 0 **and** the
    two-sided Wilcoxon p is below ``alpha``. The CI alone is too easily above 0 when most datasets tie (4
    wins and 11 ties give a CI above 0 at p = 0.125) or when there are few datasets."""
    low, p = comparison.get("ci_low"), comparison.get("wilcoxon_p")
    return low is not None and p is not None and bool(np.isfinite(low)) and low > 0 and p < alpha


def decide(comparison: Mapping[str, Any]) -> str:
    """``meta_model`` when (portfolio regret − meta-model regret) at the warm-start k shows a win
    (:func:`shows_a_win`), else ``portfolio``. ``comparison``: :func:`autodistill.meta.evaluate.paired_comparison`'s
    dict with the portfolio as the reference."""
    return META_MODEL if shows_a_win(comparison) else PORTFOLIO


@dataclass
class WarmStart:
    source: str                      # "meta_model" or "portfolio"
    recommendations: list[Any]       # Recommendation objects, best first
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "reason": self.reason, "evidence": self.evidence,
                "recommendations": [r.to_dict() for r in self.recommendations]}

    def keeping(self, recommendations: Sequence[Any]) -> "WarmStart":
        """This warm start with only ``recommendations`` (a filtered subset, best first), ranked 1..n; when
        no member of the portfolio is left, the list is the meta-model's ranking and the source says so."""
        recs = [replace(r, rank=rank) for rank, r in enumerate(recommendations, start=1)]
        if self.source == PORTFOLIO and not any(r.why.get("portfolio_member") for r in recs):
            return WarmStart(META_MODEL, recs, NO_MEMBER_LEFT, self.evidence)
        return replace(self, recommendations=recs)


def write_decision(model_dir: str | Path, portfolio: Sequence[str], k: int, comparison: Mapping[str, Any],
                   note: str = "") -> Path:
    path = Path(model_dir) / DECISION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"source": decide(comparison), "k": int(k), "portfolio": list(portfolio),
               "comparison": dict(comparison), "note": note}
    path.write_text(json.dumps(payload, indent=1, default=float), encoding="utf-8")
    return path


def read_decision(model_dir: str | Path) -> dict[str, Any] | None:
    path = Path(model_dir) / DECISION_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def choose_warm_start(recommender: Any, model_dir: str | Path, meta_features: Mapping[str, Any], top_k: int,
                      constraints: Any = None, budget: Any = None) -> WarmStart:
    """The pipelines to warm-start from, and which source they come from: the committed decision
    (:data:`DECISION_FILE`) says meta-model or portfolio; without one (a model fitted before
    decisions existed) the meta-model's ranking is used and the reason says so."""
    ranked = recommender.recommend(meta_features, top_k=len(recommender.candidates), constraints=constraints,
                                   budget=budget)
    decision = read_decision(model_dir)
    if decision is None:
        return WarmStart(META_MODEL, ranked[:top_k], "no evaluated decision in the model folder: meta-model")
    evidence = {k: decision[k] for k in ("k", "comparison", "note") if k in decision}
    if decision["source"] == META_MODEL:
        return WarmStart(META_MODEL, ranked[:top_k], "the evaluation found the meta-model's top-k better than "
                         "the best-of-k portfolio (bootstrap CI above 0)", evidence)
    chosen = [RENAMED_CANDIDATES.get(c, c) for c in decision.get("portfolio") or []]
    if not chosen:
        return WarmStart(META_MODEL, ranked[:top_k], "the stored decision says portfolio but names no member: "
                         "the meta-model's ranking", evidence)
    by_name = {r.candidate: r for r in ranked}
    members = [by_name[c] for c in chosen if c in by_name]
    rest = [r for r in ranked if r.candidate not in chosen]
    flagged = [replace(r, why={**r.why, "portfolio_member": r.candidate in chosen}) for r in (members + rest)[:top_k]]
    return WarmStart(PORTFOLIO, [], PORTFOLIO_FIRST, evidence).keeping(flagged)   # no member left: the model's
