"""Leave-one-dataset-out (LODO) evaluation of the meta-model against baselines, and its report.

For each held-out dataset D of a table (:func:`autodistill.meta.table.records_to_table`):

1. :func:`training_table` keeps only the rows of the *other* datasets (and drops any row whose dataset
   fingerprint equals one of D's, so the same data under another name cannot leak); it asserts D is
   absent. The model is fitted on that table only.
2. D's candidates are scored from their features alone (:func:`test_features`: target, score and
   teacher score are dropped) and ranked.

Methods: the meta-model with ``hgb``, ``rf`` and ``pairwise``; baselines:

- ``vanilla_kd``: the candidate named ``vanilla_kd`` if D has it, else the candidate whose pipeline
  features are closest (L1) to the default :class:`~autodistill.config.PipelineConfig`'s;
- ``single_best``: the candidate with the best mean target over the training datasets;
- ``nearest_dataset``: the best candidate of the training dataset nearest to D (L1 on standardised
  meta-features, auto-sklearn style); candidates it lacks are ranked after, by single-best order;
- ``random``: the expected value of a uniformly random pick (computed exactly, not sampled).

Metrics per held-out dataset (y = the target, e.g. student/teacher score; y* = D's best):

- ``regret1`` = y* − y(top-1): normalised regret, in target units (fraction of the teacher's score
  for ``target=ratio``); ``nregret1`` = regret1 / (y* − y_min): min-max scaled, in [0, 1];
- ``regret5`` = y* − max y over the top-5;
- ``rank1``: 1 + number of candidates strictly better than the top-1;
- ``hit5``: 1 if a best candidate is in the top-5;
- ``spearman``: rank correlation of the method's scores with y (NaN for vanilla KD; 0 for random);
- ``gap_closed`` = (regret1(single_best) − regret1(method)) / regret1(single_best), NaN when the
  single best is already optimal on D. The summary's ``gap_closed`` is computed on the means:
  1 − mean regret1(method) / mean regret1(single_best).

The best meta-model is the one with the lowest mean ``regret1`` (selected on these LODO results).
``autodistill meta evaluate`` / ``fit`` leave out datasets whose teacher is no better than the majority
class (:func:`autodistill.meta.table.uninformative_datasets`) unless ``--keep-uninformative``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ..config import PipelineConfig
from .model import METHODS, PipelineScoreRegressor, l1_distances, _scale_stats
from .table import PF_PREFIX, feature_columns, meta_feature_columns, pipeline_features

BASELINES = ("vanilla_kd", "single_best", "nearest_dataset", "random")
METRICS = ("regret1", "nregret1", "regret5", "rank1", "hit5", "spearman", "gap_closed")
TOP_K = 5
#: meta-features about an already trained teacher: unknown when a user asks for a recommendation
#: before training one, so they are left out of the models by default
TEACHER_META_FEATURES = ("mf_teacher_score", "mf_has_teacher_score", "mf_teacher_confidence",
                         "mf_has_teacher_confidence")
_HIDDEN = ("target", "score", "teacher_score", "majority_baseline", "n_runs")

FitPredict = Callable[[pd.DataFrame, pd.DataFrame, str], np.ndarray]


class LeakError(AssertionError):
    """The training table of a fold contains the held-out dataset."""


# --------------------------------------------------------------------------- the guard
def training_table(table: pd.DataFrame, held_out: str) -> pd.DataFrame:
    """Rows of every dataset except ``held_out`` (and except rows sharing its fingerprint)."""
    test_fps = set(table.loc[table["dataset"] == held_out, "fingerprint"].dropna()) \
        if "fingerprint" in table else set()
    mask = table["dataset"] != held_out
    if test_fps:
        mask &= ~table["fingerprint"].isin(test_fps)
    train = table[mask]
    if held_out in set(train["dataset"]) or (test_fps and test_fps & set(train["fingerprint"].dropna())):
        raise LeakError(f"the training table of fold {held_out!r} contains the held-out dataset")
    return train


def test_features(table: pd.DataFrame, held_out: str) -> pd.DataFrame:
    """The held-out dataset's rows without anything derived from its results."""
    return table[table["dataset"] == held_out].drop(columns=[c for c in _HIDDEN if c in table.columns])


def drop_meta_features(table: pd.DataFrame, names: Sequence[str] = TEACHER_META_FEATURES) -> pd.DataFrame:
    out = table.drop(columns=[c for c in names if c in table.columns])
    out.attrs.update(table.attrs)
    return out


# --------------------------------------------------------------------------- models
def default_model_params(method: str) -> dict[str, Any]:
    """Large ensembles: candidates on a dataset are often within noise of each other, so with few
    bags / trees the top-1 pick flips with the model seed (measured: hgb with 3 bags had a std of
    0.0056 in mean top-1 regret over 5 seeds, with 10 bags 0.0038)."""
    return {"hgb": {"n_estimators": 150, "n_bags": 10}, "rf": {"n_estimators": 1000},
            "pairwise": {"n_estimators": 100, "n_bags": 1}}[method]


def fit_model(train: pd.DataFrame, method: str, random_state: int = 0,
              model_params: dict[str, Any] | None = None) -> PipelineScoreRegressor:
    cols = feature_columns(train)
    params = {**default_model_params(method), **(model_params or {})}
    if method == "pairwise":
        params.setdefault("context_columns", [cols.index(c) for c in meta_feature_columns(train)])
    model = PipelineScoreRegressor(method=method, random_state=random_state, **params)
    return model.fit(train[cols].to_numpy(dtype=float), train["target"].to_numpy(dtype=float),
                     groups=train["dataset"].to_numpy())


def guarded_fit_predict(train: pd.DataFrame, test: pd.DataFrame, method: str, random_state: int = 0,
                        model_params: dict[str, Any] | None = None) -> np.ndarray:
    model = fit_model(train, method, random_state, model_params)
    return model.predict(test[feature_columns(train)].to_numpy(dtype=float))


# --------------------------------------------------------------------------- metrics
def ranking_metrics(y_true: Sequence[float], scores: Sequence[float], k: int = TOP_K,
                    with_spearman: bool = True) -> dict[str, float]:
    """Metrics of one ranking (highest score first; ties broken by position)."""
    y = np.asarray(y_true, dtype=float)
    s = np.asarray(scores, dtype=float)
    s = np.where(np.isfinite(s), s, -np.inf)
    order = np.argsort(-s, kind="stable")
    best, worst = y.max(), y.min()
    pick = order[0]
    top = order[:k]
    regret1 = best - y[pick]
    spear = float("nan")
    fin = np.isfinite(s)
    if with_spearman and fin.sum() > 2 and np.ptp(y[fin]) > 0 and np.ptp(s[fin]) > 0:
        spear = float(spearmanr(s[fin], y[fin]).statistic)
    return {"regret1": float(regret1), "nregret1": float(regret1 / (best - worst)) if best > worst else 0.0,
            "regret5": float(best - y[top].max()), "rank1": float(1 + np.sum(y > y[pick])),
            "hit5": float(np.any(y[top] >= best)), "spearman": spear}


def random_metrics(y_true: Sequence[float], k: int = TOP_K) -> dict[str, float]:
    """Exact expected metrics of a uniformly random ranking."""
    y = np.sort(np.asarray(y_true, dtype=float))
    n = len(y)
    best, worst = y[-1], y[0]
    k = min(k, n)
    # P(the max of a random k-subset is the i-th smallest) = C(i, k-1) / C(n, k)
    probs = np.array([math.comb(i, k - 1) for i in range(n)], dtype=float) / math.comb(n, k)
    e_best_k = float(np.sum(probs * y))
    n_best = int(np.sum(y >= best))
    p_hit = 1.0 - math.comb(n - n_best, k) / math.comb(n, k)
    ranks = np.array([1 + np.sum(y > v) for v in y], dtype=float)
    regret1 = best - y.mean()
    return {"regret1": float(regret1), "nregret1": float(regret1 / (best - worst)) if best > worst else 0.0,
            "regret5": float(best - e_best_k), "rank1": float(ranks.mean()), "hit5": float(p_hit),
            "spearman": 0.0}


# --------------------------------------------------------------------------- baselines
def _default_features() -> dict[str, float]:
    return pipeline_features(PipelineConfig())


def baseline_scores(train: pd.DataFrame, test: pd.DataFrame) -> dict[str, np.ndarray]:
    """Scores of D's candidates (``test`` rows, in order) under each deterministic baseline."""
    cands = test["candidate"].to_numpy()
    pf_cols = [c for c in test.columns if c.startswith(PF_PREFIX)]
    # single best: mean target over the training datasets
    means = train.groupby("candidate")["target"].mean()
    sb = np.array([means.get(c, np.nan) for c in cands], dtype=float)
    sb_filled = np.where(np.isfinite(sb), sb, (np.nanmin(sb) if np.isfinite(sb).any() else 0.0) - 1.0)
    # vanilla KD: by name, else nearest to the default config's pipeline features
    if "vanilla_kd" in set(cands):
        van = np.where(cands == "vanilla_kd", 1.0, 0.0)
    else:
        default = _default_features()
        ref = np.array([default.get(c, np.nan) for c in pf_cols], dtype=float)
        P = test[pf_cols].to_numpy(dtype=float)
        van = -np.nansum(np.abs(np.nan_to_num(P, nan=0.0) - np.nan_to_num(ref, nan=0.0)), axis=1)
    # nearest dataset
    mf_cols = meta_feature_columns(train)
    per_ds = train.groupby("dataset")
    names = list(per_ds.groups)
    mf = per_ds[mf_cols].first() if mf_cols else pd.DataFrame(index=names)
    near = sb_filled - 10.0  # fallback order: single best, below every observed value
    if mf_cols and len(names):
        center, scale = _scale_stats(mf)
        q = test[mf_cols].iloc[0].to_numpy(dtype=float)
        d = l1_distances(q, mf.to_numpy(dtype=float), center, scale)
        nearest = names[int(np.argsort(d, kind="stable")[0])]
        vals = train[train["dataset"] == nearest].set_index("candidate")["target"]
        got = np.array([vals.get(c, np.nan) for c in cands], dtype=float)
        near = np.where(np.isfinite(got), got, near)
    return {"vanilla_kd": van, "single_best": sb_filled, "nearest_dataset": near}


# --------------------------------------------------------------------------- LODO
@dataclass
class LodoResult:
    per_dataset: pd.DataFrame   # dataset, method, n_candidates, metrics...
    summary: pd.DataFrame       # method -> mean metrics (gap_closed on the means)
    predictions: pd.DataFrame   # dataset, candidate, method, predicted, true
    best_method: str | None
    info: dict[str, Any] = field(default_factory=dict)


def lodo_evaluate(table: pd.DataFrame, methods: Sequence[str] = METHODS, *, random_state: int = 0,
                  k: int = TOP_K, model_params: dict[str, dict[str, Any]] | None = None,
                  fit_predict: FitPredict | None = None, baselines: bool = True,
                  min_candidates: int = 2) -> LodoResult:
    """Leave-one-dataset-out evaluation (see the module docstring).

    ``fit_predict(train_table, test_features, method) -> scores`` replaces the model fit (tests);
    it only ever receives :func:`training_table` and :func:`test_features`.
    """
    model_params = model_params or {}
    rows, preds = [], []
    datasets = sorted(table["dataset"].unique())
    for held_out in datasets:
        test_rows = table[table["dataset"] == held_out]
        if len(test_rows) < min_candidates:
            continue
        train = training_table(table, held_out)
        if train.empty:
            continue
        test = test_features(table, held_out)
        y = test_rows["target"].to_numpy(dtype=float)
        scores: dict[str, np.ndarray] = {}
        for method in methods:
            if fit_predict is not None:
                scores[method] = np.asarray(fit_predict(train, test, method), dtype=float)
            else:
                scores[method] = guarded_fit_predict(train, test, method, random_state, model_params.get(method))
        if baselines:
            scores.update(baseline_scores(train, test))
        for method, s in scores.items():
            m = ranking_metrics(y, s, k, with_spearman=method != "vanilla_kd")
            rows.append({"dataset": held_out, "method": method, "n_candidates": len(y), **m})
            preds += [{"dataset": held_out, "candidate": c, "method": method, "predicted": float(p),
                       "true": float(t)} for c, p, t in zip(test_rows["candidate"], s, y)]
        if baselines:
            rows.append({"dataset": held_out, "method": "random", "n_candidates": len(y), **random_metrics(y, k)})
    per = pd.DataFrame(rows)
    if per.empty:
        return LodoResult(per, pd.DataFrame(), pd.DataFrame(preds), None)
    sb = per[per["method"] == "single_best"].set_index("dataset")["regret1"] if baselines else None
    if sb is not None:
        ref = per["dataset"].map(sb)
        with np.errstate(divide="ignore", invalid="ignore"):
            per["gap_closed"] = np.where(ref > 0, (ref - per["regret1"]) / ref, np.nan)
    else:
        per["gap_closed"] = np.nan
    summary = per.groupby("method", sort=False)[[m for m in METRICS if m != "gap_closed"]].mean()
    if sb is not None and sb.mean() > 0:
        summary["gap_closed"] = 1.0 - summary["regret1"] / sb.mean()
    else:
        summary["gap_closed"] = np.nan
    summary["n_datasets"] = per.groupby("method", sort=False)["dataset"].nunique()
    order = [m for m in [*methods, *BASELINES] if m in summary.index]
    summary = summary.loc[order]
    model_rows = summary.loc[[m for m in methods if m in summary.index]]
    best = str(model_rows["regret1"].idxmin()) if len(model_rows) else None
    return LodoResult(per, summary, pd.DataFrame(preds), best,
                      info={"n_datasets": len(datasets), "n_rows": int(len(table)), "random_state": random_state,
                            "n_candidates": int(table["candidate"].nunique()), "k": k,
                            "target": table.attrs.get("target", "ratio")})


@dataclass
class SeedStability:
    """``summary``: per meta-model, mean / std / worst over the seeds of ``regret1`` and ``gap_closed``;
    ``per_dataset``: the top-1 regret of every (seed, held-out dataset, meta-model)."""
    summary: pd.DataFrame
    per_dataset: pd.DataFrame


def seed_stability(table: pd.DataFrame, methods: Sequence[str], seeds: Sequence[int], *,
                   first: LodoResult | None = None, **kwargs: Any) -> SeedStability:
    """The LODO evaluation again with each model seed (``first``: an already computed result for
    ``seeds[0]``).

    Candidates are often within noise of each other, so a model's top-1 pick, and with it the
    comparison between models, can flip with the seed of its trees and bags."""
    rows, per_dataset = [], []
    for seed in seeds:
        res = first if first is not None and seed == seeds[0] else \
            lodo_evaluate(table, methods, random_state=seed, **kwargs)
        rows += [{"method": m, "regret1": res.summary.loc[m, "regret1"],
                  "gap_closed": res.summary.loc[m, "gap_closed"]} for m in methods if m in res.summary.index]
        mine = res.per_dataset[res.per_dataset["method"].isin(methods)]
        per_dataset.append(mine[["dataset", "method", "regret1"]].assign(seed=seed))
    per_seed = pd.DataFrame(rows).groupby("method", sort=False)
    out = per_seed.agg(regret1_mean=("regret1", "mean"), regret1_std=("regret1", "std"),
                       regret1_worst=("regret1", "max"), gap_closed_mean=("gap_closed", "mean"),
                       gap_closed_worst=("gap_closed", "min"))
    out["n_seeds"] = len(seeds)
    return SeedStability(out, pd.concat(per_dataset, ignore_index=True))


def gap_without_one_dataset(regret1: pd.DataFrame, reference: str = "single_best") -> pd.DataFrame:
    """How much one held-out dataset carries the summary: ``regret1`` is a (dataset x method) table of
    top-1 regrets; per method, the gap closed on the mean over all datasets and its lowest value when
    any one dataset is dropped from both means (a jackknife), with the dataset whose removal costs most."""
    rows = {}
    for method in regret1.columns:
        if method == reference:
            continue
        closed = {d: 1.0 - regret1[method].drop(d).mean() / regret1[reference].drop(d).mean()
                  for d in regret1.index}
        worst = min(closed, key=closed.get)
        rows[method] = {"gap_closed": 1.0 - regret1[method].mean() / regret1[reference].mean(),
                        "gap_closed_one_dropped_min": closed[worst], "dropped": worst}
    return pd.DataFrame.from_dict(rows, orient="index")


# --------------------------------------------------------------------------- report
def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "–" if not np.isfinite(v) else f"{v:.4f}"
    return str(v)


def markdown_table(df: pd.DataFrame, index_name: str = "") -> str:
    cols = [index_name or (df.index.name or ""), *map(str, df.columns)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for i, idx in enumerate(df.index):
        lines.append("| " + " | ".join([str(idx), *(_fmt(df.iloc[i, j]) for j in range(df.shape[1]))]) + " |")
    return "\n".join(lines)


def _averaged_over_seeds(first_seed: pd.DataFrame, stability: SeedStability) -> pd.DataFrame:
    """The (dataset x method) top-1 regrets of the first seed with each meta-model's column replaced by
    its mean over the seeds (the baselines do not depend on the seed)."""
    means = stability.per_dataset.pivot_table(index="dataset", columns="method", values="regret1", aggfunc="mean")
    out = first_seed.copy()
    out[means.columns] = means
    return out


def _seed_stability_section(result: LodoResult, stability: SeedStability, seed_means: pd.DataFrame,
                            out: Path) -> list[str]:
    stability.summary.to_csv(out / "seed_stability.csv")
    stability.per_dataset.to_csv(out / "seed_regret1.csv", index=False)
    baselines = result.summary.drop(index=stability.summary.index, errors="ignore")
    overview = pd.concat([stability.summary.drop(columns="n_seeds"),
                          baselines[["regret1", "gap_closed"]].rename(
                              columns={"regret1": "regret1_mean", "gap_closed": "gap_closed_mean"})])
    return ["## Over model seeds", "",
            f"Each meta-model refitted with {int(stability.summary['n_seeds'].iloc[0])} seeds: mean, std and "
            "worst over the seeds of the mean top-1 regret and of the gap closed (the baselines do not "
            "depend on the seed).", "",
            markdown_table(overview, "method"), "",
            f"Best meta-model by top-1 regret averaged over the seeds: **{result.best_method}**.", "",
            "Top-1 regret per held-out dataset, meta-models averaged over the seeds (every seed's figure "
            "is in `seed_regret1.csv`):", "",
            markdown_table(seed_means, "dataset"), ""]


def write_report(result: LodoResult, out_dir: str | Path, title: str = "Meta-model: leave-one-dataset-out") -> Path:
    """report.md + per_dataset.csv + summary.csv + predictions.csv + PNG plots in ``out_dir``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.per_dataset.to_csv(out / "per_dataset.csv", index=False)
    result.summary.to_csv(out / "summary.csv")
    result.predictions.to_csv(out / "predictions.csv", index=False)
    info = result.info
    lines = [f"# {title}", "",
             f"{info.get('n_datasets', '?')} datasets, {info.get('n_candidates', '?')} candidates, "
             f"{info.get('n_rows', '?')} (dataset, candidate) rows; target `{info.get('target', 'ratio')}`; "
             f"top-k = {info.get('k', TOP_K)}. Each dataset is held out in turn and the models are fitted on the "
             "others only. Regret is in target units (y* − y of the pick); `nregret1` is min-max scaled per "
             "dataset; `gap_closed` is the share of the single-best → oracle gap in mean top-1 regret that a "
             "method closes.", ""]
    if info.get("left_out"):
        lines += ["Left out (their teacher scores no better than always predicting the majority class, so "
                  "every candidate's target is noise around chance; `--keep-uninformative` keeps them): "
                  + ", ".join(f"{d} (teacher {t:.3f}, majority {b:.3f})" for d, (t, b) in info["left_out"].items())
                  + ".", ""]
    if result.summary.empty:
        lines.append("No dataset had enough candidates to evaluate.")
        (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return out / "report.md"
    stability = info.get("seed_stability")
    piv = result.per_dataset.pivot(index="dataset", columns="method", values="regret1")
    piv = piv[[m for m in result.summary.index if m in piv.columns]]
    regret1, seed_note = piv, ""
    if stability is not None:
        regret1 = _averaged_over_seeds(piv, stability)
        lines += _seed_stability_section(result, stability, regret1, out)
        seed_note = f" (model seed {info.get('random_state', '?')}, the first of the seeds above)"
    lines += [f"## Mean over held-out datasets{seed_note}", "", markdown_table(result.summary, "method"), ""]
    if stability is None:
        lines += [f"Best meta-model by mean top-1 regret: **{result.best_method}**.", ""]
    lines += [f"## Top-1 regret per held-out dataset{seed_note}", "", markdown_table(piv, "dataset"), ""]
    if "single_best" in piv.columns and len(piv) > 2:
        lines += ["## Does one dataset carry it?", "",
                  "Gap closed on the mean over all held-out datasets, and its lowest value when any one "
                  "dataset is dropped" + (" (meta-models averaged over the seeds)" if stability is not None
                                          else "") + ":", "",
                  markdown_table(gap_without_one_dataset(regret1.dropna()), "method"), ""]
    # plots
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(piv) + 3), 4))
    width = 0.8 / max(1, piv.shape[1])
    x = np.arange(len(piv))
    for i, m in enumerate(piv.columns):
        ax.bar(x + i * width, piv[m].to_numpy(), width, label=m)
    ax.set_xticks(x + 0.4 - width / 2, piv.index, rotation=45, ha="right")
    ax.set_ylabel("top-1 regret (target units)")
    ax.set_title("Top-1 regret per held-out dataset")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "regret_per_dataset.png", dpi=110)
    plt.close(fig)
    lines += ["![top-1 regret per dataset](regret_per_dataset.png)", ""]
    if result.best_method is not None:
        p = result.predictions[result.predictions["method"] == result.best_method]
        fig, ax = plt.subplots(figsize=(5, 5))
        for ds, g in p.groupby("dataset"):
            ax.scatter(g["true"], g["predicted"], s=10, label=ds)
        lo = float(min(p["true"].min(), p["predicted"].min()))
        hi = float(max(p["true"].max(), p["predicted"].max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel("true target")
        ax.set_ylabel(f"predicted ({result.best_method}, held out)")
        ax.set_title("Predicted vs true, leave-one-dataset-out")
        if p["dataset"].nunique() <= 20:
            ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        fig.savefig(out / "pred_vs_true.png", dpi=110)
        plt.close(fig)
        lines += ["![predicted vs true](pred_vs_true.png)", ""]
    lines += ["Files: `summary.csv`, `per_dataset.csv` (every metric per dataset and method), "
              "`predictions.csv` (every held-out score).", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    return out / "report.md"
