"""Command-line commands of the meta-model: ``meta evaluate``, ``meta fit`` and ``recommend``.

``add_meta_model_commands(subparsers)`` attaches ``evaluate`` and ``fit`` to the ``meta`` command
group (creating the group when no other module has registered it yet) and adds the top-level
``recommend`` command.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "meta_dataset" / "model"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _meta_subparsers(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    meta = subparsers.choices.get("meta")
    if meta is None:
        meta = subparsers.add_parser("meta", help="the meta-dataset and the meta-model (recommender)")
    for action in meta._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return meta.add_subparsers(dest="meta_command", required=True)


def add_meta_model_commands(subparsers: argparse._SubParsersAction) -> None:
    meta_sub = _meta_subparsers(subparsers)

    def records_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--records", nargs="+", required=True,
                       help="record JSONL files or folders (every *.jsonl below them)")
        p.add_argument("--features", help="folder of per-dataset meta-feature JSON files "
                       "(default: a 'features' folder next to the records)")
        p.add_argument("--target", choices=("ratio", "best"), default="ratio",
                       help="normalised score: student/teacher (ratio) or student/best on the dataset")
        p.add_argument("--methods", nargs="+", choices=("hgb", "rf", "pairwise"),
                       default=["hgb", "rf", "pairwise"])
        p.add_argument("--teacher-features", action="store_true",
                       help="keep the trained-teacher meta-features (score, confidence) as model inputs")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--repeats", type=_positive_int, default=1,
                       help="evaluate with this many model seeds (--seed, --seed+1, ...); the best meta-model "
                       "is then the one with the lowest top-1 regret averaged over them")
        p.add_argument("--keep-uninformative", action="store_true",
                       help="keep datasets whose teacher is no better than the majority class "
                       "(left out by default: their targets are noise around chance)")

    e = meta_sub.add_parser("evaluate", help="leave-one-dataset-out evaluation -> markdown report + plots")
    records_args(e)
    e.add_argument("--out", required=True, type=Path, help="report folder")
    e.set_defaults(func=_evaluate)

    f = meta_sub.add_parser("fit", help="fit the best meta-model (by LODO top-1 regret) on all records")
    records_args(f)
    f.add_argument("--method", choices=("auto", "hgb", "rf", "pairwise"), default="auto",
                   help="auto: the best of --methods by leave-one-dataset-out top-1 regret (averaged over "
                   "--repeats seeds: one seed's choice is noisy, e.g. on meta_dataset/runs seed 0 picks "
                   "pairwise, 10 seeds hgb)")
    f.add_argument("--out", required=True, type=Path, help="model folder")
    f.set_defaults(func=_fit)

    r = subparsers.add_parser("recommend", help="recommend KD pipelines for a dataset")
    r.add_argument("--data", help="train file or dataset folder (default: bundled CR)")
    r.add_argument("--validation", help="validation file")
    r.add_argument("--config", help="pipeline config (YAML/JSON) for the data columns and teacher backbone")
    r.add_argument("--top-k", type=int, default=5)
    r.add_argument("--json", action="store_true", help="print JSON")
    r.add_argument("--model", type=Path, default=None, help=f"meta-model folder (default: {DEFAULT_MODEL_DIR})")
    r.add_argument("--no-backbone", action="store_true", help="skip the embedding meta-features (faster)")
    r.add_argument("--constraint", action="append", default=[], metavar="PATH=VALUE",
                   help="keep only candidates whose config has this value, e.g. student.num_layers=2")
    r.set_defaults(func=_recommend)


def _load_table(args: argparse.Namespace):
    """The table of ``--records`` and, unless ``--keep-uninformative``, the datasets left out of it."""
    from .evaluate import drop_meta_features
    from .table import drop_uninformative, table_from_paths

    table = table_from_paths(args.records, target=args.target, features_dir=args.features)
    if not args.teacher_features:
        table = drop_meta_features(table)
    dropped: dict = {}
    if not args.keep_uninformative:
        table, dropped = drop_uninformative(table)
    if dropped:
        print("left out (teacher no better than the majority class; --keep-uninformative keeps them): "
              + ", ".join(f"{d} ({t:.3f} <= {b:.3f})" for d, (t, b) in dropped.items()), file=sys.stderr)
    return table, dropped


def _lodo(table, args: argparse.Namespace, left_out: dict):
    """LODO with ``--seed`` and, with ``--repeats`` > 1, the best method chosen over that many seeds."""
    from .evaluate import lodo_evaluate, seed_stability

    result = lodo_evaluate(table, methods=args.methods, random_state=args.seed)
    result.info["left_out"] = left_out
    if args.repeats > 1:
        stability = seed_stability(table, args.methods, range(args.seed, args.seed + args.repeats), first=result)
        result.info["seed_stability"] = stability
        result.best_method = str(stability.summary["regret1_mean"].idxmin())
    return result


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import write_report

    t0 = time.time()
    try:
        table, dropped = _load_table(args)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if table["dataset"].nunique() < 2:
        print(f"error: leave-one-dataset-out needs at least 2 datasets, got {table['dataset'].nunique()}",
              file=sys.stderr)
        return 2
    result = _lodo(table, args, dropped)
    report = write_report(result, args.out)
    print(result.summary.round(4).to_string())
    print(f"\nbest meta-model: {result.best_method}; report: {report} ({time.time() - t0:.0f} s)")
    return 0


def _fit(args: argparse.Namespace) -> int:
    from .evaluate import default_model_params, write_report
    from .model import Recommender

    try:
        table, dropped = _load_table(args)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if table.empty:
        print("error: no usable records", file=sys.stderr)
        return 2
    info = {"target": args.target, "records": [str(p) for p in args.records],
            "teacher_features": bool(args.teacher_features),
            "left_out_uninformative": {d: list(v) for d, v in dropped.items()}}
    method = args.method
    if method == "auto":
        if table["dataset"].nunique() < 2:
            method = "hgb"
        else:
            result = _lodo(table, args, dropped)
            method = result.best_method or "hgb"
            write_report(result, Path(args.out) / "evaluation")
            info["lodo_summary"] = json.loads(result.summary.to_json(orient="index"))
            if "seed_stability" in result.info:
                info["lodo_seed_stability"] = json.loads(result.info["seed_stability"].summary.to_json(orient="index"))
    rec = Recommender.fit(table, method=method, random_state=args.seed,
                          model_params=default_model_params(method), info=info, target=args.target)
    rec.save(args.out)
    print(f"meta-model ({method}; {len(table)} rows, {table['dataset'].nunique()} datasets, "
          f"{table['candidate'].nunique()} candidates) saved to {args.out}")
    return 0


def _parse_constraints(items: list[str]) -> dict:
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--constraint {item!r}: expected PATH=VALUE")
        path, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(path.strip(), []).append(value)
    return out


def _recommend(args: argparse.Namespace) -> int:
    from ..auto import recommend_for
    from ..config import ConfigError, PipelineConfig, load_config
    from ..data import DataError, bundled_dataset_path
    from ..models import ModelLoadError
    from .model import ModelVersionError

    t0 = time.time()
    try:
        constraints = _parse_constraints(args.constraint) or None
        cfg = load_config(args.config) if args.config else PipelineConfig()
        data = args.data or str(bundled_dataset_path())
        updates = {"train": data, **({"validation": args.validation} if args.validation else {})}
        rec, recs, feats = recommend_for(cfg.data.model_copy(update=updates), args.model or DEFAULT_MODEL_DIR,
                                         args.top_k, backbone=cfg.teacher.backbone,
                                         embeddings=not args.no_backbone, constraints=constraints)
    except (FileNotFoundError, ModelVersionError, ConfigError, DataError, ModelLoadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seconds = time.time() - t0
    if args.json:
        print(json.dumps({"dataset": data, "meta_features": feats, "seconds": round(seconds, 2),
                          "recommendations": [r.to_dict() for r in recs]}, indent=2, default=str))
        return 0
    print(f"top {len(recs)} pipelines for {data} (predicted {rec.target}; {seconds:.1f} s):")
    for r in recs:
        print(f"{r.rank:>2}. {r.candidate:<32} predicted {r.predicted_score:.4f} ± {r.uncertainty:.4f}")
    if recs:
        near = ", ".join(f"{n['dataset']} ({n['distance']:.2f})" for n in recs[0].why["nearest_datasets"])
        feats_txt = ", ".join(f["feature"] for f in recs[0].why["top_features"])
        print(f"\nnearest datasets in the meta-dataset: {near}\nfeatures that mattered most: {feats_txt}")
        print("\nthe top config (use it with `autodistill distill --config`):")
        print(json.dumps(recs[0].config, indent=1))
    return 0
