"""`autodistill recommend`: the KD pipelines the product recommends for a dataset: the meta-model's ranking, or
the best-of-k portfolio first when the model's committed evaluation chose it (the same order `auto` and the
service warm-start from, :func:`~autodistill.meta.warm_start.choose_warm_start`)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..config import ConfigError, PipelineConfig, load_config, unknown_config_path, with_pipeline
from ..data import DataError
from ..meta.fitting import DEFAULT_MODEL_DIR
from ..meta.model_files import ModelVersionError
from ..meta.recommend import recommend_for
from ..meta.recommender import extrapolation_notes, prediction_text
from ..meta.warm_start import PORTFOLIO, choose_warm_start
from .common import Commands, data_or_bundled


def register(commands: Commands) -> None:
    r = commands.add_parser("recommend", help="recommend KD pipelines for a dataset")
    r.add_argument("--data", help="train file or dataset folder (default: bundled CR)")
    r.add_argument("--validation", help="validation file")
    r.add_argument("--config", help="pipeline config (YAML/JSON) for the data columns and teacher backbone")
    r.add_argument("--top-k", type=int, default=5)
    r.add_argument("--json", action="store_true", help="print JSON")
    r.add_argument("--model", type=Path, default=None, help=f"meta-model folder (default: {DEFAULT_MODEL_DIR})")
    r.add_argument("--no-backbone", action="store_true",
                   help="skip the embedding meta-features (faster; a meta-model fitted with them then extrapolates, "
                        "and says so)")
    r.add_argument("--constraint", action="append", default=[], metavar="PATH=VALUE",
                   help="keep only candidates whose config has this value, e.g. student.num_layers=2")
    r.set_defaults(func=run)


def parse_constraints(items: list[str]) -> dict:
    """``--constraint PATH=VALUE`` options as ``{path: [values]}`` (a value is JSON, else the text); PATH
    must name a setting of the pipeline config."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--constraint {item!r}: expected PATH=VALUE")
        path, raw = item.split("=", 1)
        why = unknown_config_path(path.strip())
        if why:
            raise ValueError(f"--constraint {item!r}: {why}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(path.strip(), []).append(value)
    return out


def no_candidate_text(constraints: list[str]) -> str:
    if not constraints:
        return "no pipeline of the meta-model's portfolio applies to this dataset's task"
    given = " and ".join(f"--constraint {c}" for c in constraints)
    return f"no pipeline of the meta-model's portfolio satisfies {given} on this dataset's task; loosen them"


def run(args: argparse.Namespace) -> int:
    from ..models import ModelLoadError  # torch (~4 s): only when it runs, not for --help or the others

    t0 = time.time()
    model_dir = args.model or DEFAULT_MODEL_DIR
    try:
        if args.top_k < 1:
            raise ValueError(f"--top-k must be at least 1, not {args.top_k}")
        constraints = parse_constraints(args.constraint) or None
        cfg = load_config(args.config) if args.config else PipelineConfig()
        data = data_or_bundled(args.data, cfg.data.train)
        updates = {"train": data, **({"validation": args.validation} if args.validation else {})}
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update=updates)})
        rec, model_top, feats = recommend_for(cfg.data, model_dir, args.top_k, backbone=cfg.teacher.backbone,
                                              embeddings=not args.no_backbone, constraints=constraints, budget=cfg)
        start = choose_warm_start(rec, model_dir, feats, args.top_k, constraints=constraints, budget=cfg)
        if not start.recommendations:
            raise ValueError(no_candidate_text(args.constraint))
    except (FileNotFoundError, ModelVersionError, ConfigError, DataError, ModelLoadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seconds = time.time() - t0
    recs = start.recommendations
    if args.json:
        print(json.dumps({"dataset": data, "meta_features": feats, "seconds": round(seconds, 2),
                          "source": start.source, "reason": start.reason, "evidence": start.evidence,
                          "recommendations": [r.to_dict() for r in recs],
                          "meta_model_ranking": [r.to_dict() for r in model_top],
                          "top_config": with_pipeline(cfg, recs[0].config).to_dict() if recs else None},
                         indent=2, default=str))
        return 0
    if start.source == PORTFOLIO:
        print(f"note: {start.reason}; the meta-model's own top {len(model_top)}: "
              f"{', '.join(r.candidate for r in model_top)}\n")
    for note in extrapolation_notes(recs[0].why) if recs else []:
        print(f"note: {note}\n")
    print(f"top {len(recs)} pipelines for {data} (from the {start.source.replace('_', '-')}; predicted {rec.target}; "
          f"{seconds:.1f} s):")
    for r in recs:
        print(f"{r.rank:>2}. {r.candidate:<32} predicted {prediction_text(r.predicted_score, r.uncertainty)}")
    if recs:
        near = ", ".join(f"{n['dataset']} ({n['distance']:.2f})" for n in recs[0].why["nearest_datasets"])
        feats_txt = ", ".join(f["feature"] for f in recs[0].why["top_features"])
        print(f"\nnearest datasets in the meta-dataset: {near}\nfeatures that mattered most: {feats_txt}")
        print("\nthe top pipeline on your data and budget (use it with `autodistill distill --config`):")
        print(json.dumps(with_pipeline(cfg, recs[0].config).to_dict(), indent=1))
    return 0
