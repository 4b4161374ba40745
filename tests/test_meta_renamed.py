"""The OLD PRESET meta-model (``meta_dataset/model_old_preset``, the committed model until the v2 refit) was
fitted on records whose candidate was later renamed (issue 18: the old ``contextual`` without a masked LM is
``embedding_neighbour``): what it recommends must run today."""
from pathlib import Path

from autodistill.config import check_runnable, with_pipeline
from autodistill.meta.portfolio import RENAMED_CANDIDATES
from autodistill.meta.recommender import Recommender
from autodistill.meta.warm_start import choose_warm_start

MODEL = Path(__file__).resolve().parents[1] / "meta_dataset" / "model_old_preset"


def test_every_recommendation_of_the_committed_model_runs_today(tmp_path):
    rec = Recommender.load(MODEL)
    feats = {c: 0.0 for c in rec.meta_feature_columns} if hasattr(rec, "meta_feature_columns") else {}
    ranked = rec.recommend(feats, top_k=len(rec.candidates))
    names = {r.candidate for r in ranked}
    assert not names & set(RENAMED_CANDIDATES)
    assert set(RENAMED_CANDIDATES.values()) <= names
    for r in ranked:
        check_runnable(with_pipeline({}, r.config))   # raises on a pipeline that cannot run


def test_the_portfolio_warm_start_finds_renamed_members():
    rec = Recommender.load(MODEL)
    ws = choose_warm_start(rec, MODEL, {}, top_k=4)
    assert len(ws.recommendations) == 4
    assert "aug_neighbour_random_mixup_mi0.9" in [r.candidate for r in ws.recommendations]
