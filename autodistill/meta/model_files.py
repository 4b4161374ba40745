"""A saved meta-model: its files, their format and library versions, and the types a file may hold.

A model folder holds ``model.skops`` (the fitted estimator, saved with skops: an explicit allow-list
of types, never pickle) and ``model.json`` (the sidecar: format version, library versions, and what
the recommender needs besides the estimator). Loading a model saved by another format or
scikit-learn version is refused, and so is a file holding a type outside :data:`TRUSTED_TYPES`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ..records import library_versions
from .model import PipelineScoreRegressor

FORMAT_VERSION = 1
MODEL_FILE = "model.skops"
SIDECAR_FILE = "model.json"
#: the libraries whose versions a saved model states
MODEL_LIBRARIES = ("autodistill", "scikit-learn", "skops", "numpy")


class ModelVersionError(RuntimeError):
    """A saved meta-model from another format or library version."""


#: versions that must match for a saved model to load (the skops file holds scikit-learn objects)
MUST_MATCH = ("scikit-learn",)

#: the only types (beyond skops' default-trusted ones) a model file may contain; kept in code, never
#: read from the file or its sidecar
TRUSTED_TYPES = (
    "autodistill.meta.model.PipelineScoreRegressor",
    "autodistill.meta.model.PairwiseRanker",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn._loss.loss.HalfSquaredError",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss.link.IdentityLink",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.Interval",
    "sklearn._loss._loss.CyHalfSquaredError",
    "sklearn._loss._loss.CyHalfBinomialLoss",
    "sklearn.tree._tree.Tree",
    "sklearn.utils._bunch.Bunch",
    "numpy.random._mt19937.MT19937",
    "numpy.random.mtrand.RandomState",
    "numpy.dtype",
    "builtins.slice",
)


def check_versions(sidecar: Mapping[str, Any], where: Any = "") -> None:
    """Refuse a model saved with another format version or scikit-learn version (naming both)."""
    saved_fmt = sidecar.get("format_version")
    if saved_fmt != FORMAT_VERSION:
        raise ModelVersionError(
            f"meta-model {where} has format version {saved_fmt}, this autodistill reads format version "
            f"{FORMAT_VERSION}: refit it with `autodistill meta fit`")
    now = library_versions(MODEL_LIBRARIES)
    saved = sidecar.get("versions") or {}
    for lib in MUST_MATCH:
        if saved.get(lib) != now.get(lib):
            raise ModelVersionError(
                f"meta-model {where} was saved with {lib} {saved.get(lib)}, this environment has {lib} "
                f"{now.get(lib)}: refusing to load it; refit it with `autodistill meta fit`")


def json_safe(value: Any) -> Any:
    """What JSON cannot hold as it is, as a float (numpy numbers) or else as text."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def save_model(folder: str | Path, model: PipelineScoreRegressor, sidecar: Mapping[str, Any]) -> Path:
    """Write ``model`` (skops) and ``sidecar`` (JSON, with the format and library versions) to ``folder``."""
    import skops.io as sio

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sio.dump({"model": model}, folder / MODEL_FILE)
    side = {"format_version": FORMAT_VERSION, "versions": library_versions(MODEL_LIBRARIES), **sidecar}
    (folder / SIDECAR_FILE).write_text(json.dumps(side, indent=1, sort_keys=True, default=json_safe),
                                       encoding="utf-8")
    return folder


def load_model(folder: str | Path) -> tuple[PipelineScoreRegressor, dict[str, Any]]:
    """(the estimator, the sidecar) of a saved model, refused when its versions or types are not ours."""
    import skops.io as sio

    folder = Path(folder)
    side_path, model_path = folder / SIDECAR_FILE, folder / MODEL_FILE
    if not side_path.is_file() or not model_path.is_file():
        raise FileNotFoundError(f"no meta-model in {folder} (needs {SIDECAR_FILE} and {MODEL_FILE}); "
                                "fit one with `autodistill meta fit --records ... --out DIR`")
    side = json.loads(side_path.read_text(encoding="utf-8"))
    check_versions(side, folder)
    untrusted = sio.get_untrusted_types(file=model_path)
    unknown = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if unknown:
        raise ModelVersionError(f"{model_path} contains types this version does not trust: {unknown}; "
                                "refusing to load it")
    model = sio.load(model_path, trusted=[t for t in untrusted if t in TRUSTED_TYPES])["model"]
    if not isinstance(model, PipelineScoreRegressor):
        raise ModelVersionError(f"{model_path} does not hold a PipelineScoreRegressor")
    return model, side
