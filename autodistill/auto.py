"""`autodistill auto`: the whole product on one dataset - recommend KD pipelines from the dataset's
meta-features (the AutoDistiller of He et al. 2021), train the top recommendation to completion (the
student the user gets whatever happens next), spend the rest of the budget on a TPE search seeded with
the other recommendations, export the best completed student and say how it compares."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, pipeline_only, with_pipeline
from .meta.features import search_meta_features
from .meta.recommend import recommend_for
from .meta.recommender import extrapolation_notes, prediction_text
from .meta.warm_start import choose_warm_start
from .progress import EventLog
from .search.driver import SearchRequest, SearchResult, run_search
from .search.space import SearchSpace, distinct_points, load_space

RECOMMENDATIONS_FILE = "recommendations.json"


@dataclass
class AutoResult:
    recommendations: list[dict[str, Any]]
    warm_start: list[dict[str, Any]]
    search: SearchResult
    recommend_seconds: float
    seed_labels: list[str]


def run_auto(data: str | Path, out_dir: str | Path, model_dir: str | Path, space: str | SearchSpace = "cpu-fast",
             trials: int | None = 8, time_budget: float | None = 600.0, seeds: int = 4,
             resume: bool = False, quiet: bool = False, verbose: bool = False,
             max_train_examples: int | None = None, events: EventLog | None = None) -> AutoResult:
    """Recommend; train the top recommendation to completion (the anchor); search ``space`` with the
    rest of the budget, warm-started with the next ``seeds - 1`` distinct recommendations.

    ``trials`` counts students (the anchor included); ``time_budget`` is wall-clock seconds for the
    students, the teacher's fine-tune apart. All training rows are used unless ``max_train_examples``
    asks for a subsample."""
    if seeds < 1:
        raise ConfigError(f"seeds={seeds}: at least 1 recommendation is needed (the one trained first)")
    events = events or EventLog(quiet=quiet)
    out = Path(out_dir)
    if not resume and (out / RECOMMENDATIONS_FILE).exists():   # before its recommendations are overwritten
        raise FileExistsError(f"{out} holds a previous `auto` run: pass --resume to continue it, or choose another "
                              "output folder")
    out.mkdir(parents=True, exist_ok=True)
    sp = load_space(space)
    data_part: dict[str, Any] = {"train": str(data)}
    if max_train_examples:
        data_part["max_train_examples"] = max_train_examples
    events.emit("recommend", "computing the dataset's meta-features and ranking KD pipelines")
    t0 = time.perf_counter()
    base = sp.to_config({})   # the rows the search trains on are the ones the features describe
    rec, _, feats = recommend_for(base.data.model_copy(update=data_part), model_dir, top_k=4 * seeds,
                                  backbone=base.teacher.backbone)
    start = choose_warm_start(rec, model_dir, feats, 4 * seeds, budget=base)
    recs, seconds = start.recommendations, time.perf_counter() - t0
    events.emit("recommend", f"warm start from the {start.source.replace('_', ' ')}: {start.reason}")
    top = recs[0]
    for note in extrapolation_notes(top.why):
        events.emit("recommend", f"note: {note}")
    anchor_label = f"recommendation #{top.rank}: {top.candidate}"
    # the top pipeline is trained exactly as recommended; the search is seeded with the next ones, as
    # far as the space can express them
    anchor_config = with_pipeline(base, top.config)
    picked = [(k + 1, point) for k, point in distinct_points(sp, [r.config for r in recs[1:]], seeds - 1,
                                                             trained=[anchor_config])] if seeds > 1 else []
    points = [point for _, point in picked]
    labels = [f"recommendation #{recs[k].rank}: {recs[k].candidate}" for k, _ in picked]
    approximate = {k for k, point in picked if pipeline_only(sp.to_config(sp.encode(point)))
                   != pipeline_only(with_pipeline(base, recs[k].config))}
    for k, r in [(0, top), *((k, recs[k]) for k, _ in picked)]:
        how_seeded = f" (seeds the search as near as the {sp.name} space can express it)" if k in approximate else ""
        events.emit("recommend", f"#{r.rank} {r.candidate}: predicted student/teacher "
                                 f"{prediction_text(r.predicted_score, r.uncertainty, 3)}{how_seeded}")
    events.emit("recommend", f"done in {seconds:.1f} s; #{top.rank} is trained first as recommended, "
                             f"{len(points)} more seed the search in the {sp.name} space")
    (out / RECOMMENDATIONS_FILE).write_text(json.dumps(
        {"meta_features": feats, "seconds": seconds, "warm_start_source": start.source, "reason": start.reason,
         "recommendations": [r.to_dict() for r in recs], "anchor": anchor_label, "warm_start": points,
         "seed_labels": labels}, indent=2, default=str), encoding="utf-8")
    result = run_search(SearchRequest(data_part, sp, out, trials=trials, time_budget=time_budget,
                                      warm_start=points or None, resume=resume, quiet=quiet, verbose=verbose,
                                      seed_labels=labels, anchor_pipeline=(top.config, anchor_label),
                                      meta_features=search_meta_features), events=events)
    return AutoResult([r.to_dict() for r in recs], points, result, seconds, [anchor_label, *labels])
