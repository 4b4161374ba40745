"""The service's refit and `autodistill meta fit` are one fitting function (autodistill/meta/fitting.py):
on the same records they give the same meta-model - the same datasets left out, the same rows, the
same rankings and predictions."""
from __future__ import annotations

import shutil

import pytest

from autodistill.cli import main
from autodistill.meta import META_DATASET_DIR
from autodistill.meta.fitting import DEFAULT_MODEL_DIR
from autodistill.meta.recommender import Recommender
from autodistill.meta.table import load_feature_dir
from service import db
from service.errors import ApiError
from service.recommend import REFIT_METHOD, RecommenderService, base_record_paths
from service.settings import ServiceSettings
from service.store import Store

# cola's teacher and students all predict the majority class: an uninformative dataset both leave out
RECORDS = [META_DATASET_DIR / "runs" / f"{name}.jsonl" for name in ("cola", "cr", "mr")]


def test_the_services_refit_gives_the_model_meta_fit_gives(tmp_path):
    assert main(["meta", "fit", "--records", *map(str, RECORDS), "--method", REFIT_METHOD,
                 "--out", str(tmp_path / "cli")]) == 0
    settings = ServiceSettings(state_dir=tmp_path / "svc", base_records=RECORDS, meta_features_backbone=None)
    settings.state_dir.mkdir()
    engine = db.make_engine(settings.sqlalchemy_url)
    db.migrate(engine)
    try:
        summary = RecommenderService(Store(engine), settings).refit()
    finally:
        engine.dispose()
    cli, svc = Recommender.load(tmp_path / "cli"), Recommender.load(summary["model_path"])

    assert sorted(cli.datasets) == sorted(svc.datasets) == ["cr", "mr"]
    assert cli.info["left_out_uninformative"] == svc.info["left_out_uninformative"] == ["cola"]
    assert cli.info["choice"] == svc.info["choice"]
    assert summary["rows"] == cli.info["n_rows"] == svc.info["n_rows"]
    assert [c["name"] for c in cli.candidates] == [c["name"] for c in svc.candidates]
    features = load_feature_dir(META_DATASET_DIR / "features")
    for name in ("cola", "cr", "mr"):   # every dataset's ranking, the left-out one's too
        a, b = (rec.recommend(features[name], top_k=len(rec.candidates)) for rec in (cli, svc))
        assert [r.candidate for r in a] == [r.candidate for r in b]
        assert [r.predicted_score for r in a] == pytest.approx([r.predicted_score for r in b], abs=1e-12)



def test_a_refit_starts_from_the_records_its_model_was_fitted_on(tmp_path, monkeypatch):
    """The default base of a refit is what the model's sidecar names: the committed model's own records (the
    v2 build once it is refitted, never the old preset's by a hard-coded path), or another model's."""
    committed = base_record_paths()
    assert committed and all(p.exists() for p in committed)
    assert [str(p) for p in committed] == [str(META_DATASET_DIR.parent / p)
                                           for p in Recommender.load(DEFAULT_MODEL_DIR).info["records"]]
    monkeypatch.chdir(tmp_path)    # run from elsewhere: the sidecar keeps checkout-relative paths, not cwd-relative
    assert main(["meta", "fit", "--records", *map(str, RECORDS[1:]), "--out", str(tmp_path / "model")]) == 0
    assert Recommender.load(tmp_path / "model").info["records"] == ["meta_dataset/runs/cr.jsonl",
                                                                    "meta_dataset/runs/mr.jsonl"]
    assert base_record_paths(tmp_path / "model") == RECORDS[1:]
    assert base_record_paths(tmp_path / "no-model") == []


def test_a_refit_refuses_when_its_models_records_are_missing(tmp_path):
    """Refitting on the tenants' records alone would drop the whole meta-dataset without a word: refused."""
    copies = [tmp_path / "records" / p.name for p in RECORDS]
    copies[0].parent.mkdir()
    for src, dst in zip(RECORDS, copies):
        shutil.copyfile(src, dst)
    assert main(["meta", "fit", "--records", *map(str, copies), "--out", str(tmp_path / "model")]) == 0
    shutil.rmtree(tmp_path / "records")
    assert base_record_paths(tmp_path / "model") == copies          # named, whether or not they exist
    settings = ServiceSettings(state_dir=tmp_path / "svc", model_dir=tmp_path / "model", meta_features_backbone=None)
    settings.state_dir.mkdir()
    engine = db.make_engine(settings.sqlalchemy_url)
    db.migrate(engine)
    try:
        with pytest.raises(ApiError) as err:
            RecommenderService(Store(engine), settings).refit()
    finally:
        engine.dispose()
    assert err.value.status == 409 and "missing" in err.value.detail and copies[0].name in err.value.detail
