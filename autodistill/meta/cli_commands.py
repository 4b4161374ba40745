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


def _inner_folds(text: str) -> int | None:
    """``logo`` (leave-one-dataset-group-out: None) or a number of grouped folds >= 2."""
    if text.strip().lower() == "logo":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'logo' or a number of folds >= 2, got {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected 'logo' or a number of folds >= 2, got {value}")
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
                       help="evaluate with this many model seeds (--seed, --seed+1, ...): a held-out dataset's "
                       "figures are the mean over them")
        p.add_argument("--inner-folds", type=_inner_folds, default=None, metavar="logo|K",
                       help="the CV inside each training fold that selects the meta-model's choice: 'logo' "
                       "(default: each training dataset group is one fold) or K grouped folds (cheaper with many "
                       "datasets)")
        p.add_argument("--keep-uninformative", action="store_true",
                       help="always train on datasets whose teacher is no better than the majority class "
                       "(by default the nested selection decides; they are never held out: their targets are "
                       "noise around chance)")

    e = meta_sub.add_parser("evaluate", help="nested leave-one-dataset-out evaluation -> markdown report")
    records_args(e)
    e.add_argument("--out", required=True, type=Path, help="report folder")
    e.add_argument("--portfolio-k", type=_positive_int, default=4,
                   help="size of the best-of-k portfolio and of the warm start it is compared at")
    e.add_argument("--noise-records", nargs="+", default=[],
                   help="record files/folders with other student seeds of the same datasets, for the noise floor "
                   "(seeds within --records count too)")
    e.add_argument("--note", default="", help="a line the report starts with (e.g. which preset the records are)")
    e.set_defaults(func=_evaluate)

    f = meta_sub.add_parser("fit", help="fit the meta-model on all records (choice selected as in the nested evaluation)")
    records_args(f)
    f.add_argument("--method", choices=("auto", "hgb", "rf", "pairwise"), default="auto",
                   help="auto: the choice (family, ensemble size, leave-out rule) that the grouped CV of "
                   "`meta evaluate`'s inner folds selects on all records")
    f.add_argument("--evaluation", type=Path,
                   help="a `meta evaluate` report folder: its decision.json (meta-model or portfolio warm start) "
                   "is stored with the model")
    f.add_argument("--out", required=True, type=Path, help="model folder")
    f.set_defaults(func=_fit)

    d = meta_sub.add_parser("decide", help="store an evaluation's warm-start decision (meta-model or portfolio) "
                            "with a model")
    d.add_argument("--evaluation", required=True, type=Path, help="a `meta evaluate` report folder (decision.json)")
    d.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="model folder")
    d.set_defaults(func=_decide)

    pl = meta_sub.add_parser("pilot", help="a pilot's records -> seed noise, centred means, candidates to merge")
    pl.add_argument("--records", nargs="+", required=True, help="record JSONL files or folders")
    pl.add_argument("--out", required=True, type=Path, help="report folder (pilot.md, pilot_runs.csv)")
    pl.set_defaults(func=_pilot)

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


def _pilot(args: argparse.Namespace) -> int:
    from ..records import load_records
    from .pilot import pilot_report, write_pilot_report

    report = pilot_report(load_records(args.records))
    if report.centred.empty:
        print("error: no candidate ran on every context of these records", file=sys.stderr)
        return 2
    path = write_pilot_report(report, args.out)
    print(path.read_text(encoding="utf-8"))
    return 0


def _load_table(args: argparse.Namespace):
    """The table of ``--records`` (uninformative datasets stay in it: whether the meta-model trains on
    them is one of its nested choices, and they are never held out)."""
    from .evaluate import drop_meta_features
    from .table import table_from_paths

    table = table_from_paths(args.records, target=args.target, features_dir=args.features)
    return table if args.teacher_features else drop_meta_features(table)


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import PLAIN_HGB, PLAIN_HGB_STATED, nested_lodo_evaluate, seed_noise_floor, write_nested_report
    from ..records import load_records
    from .columns import stated_meta_feature_columns

    t0 = time.time()
    try:
        table = _load_table(args)
        noise = seed_noise_floor(load_records([*args.records, *args.noise_records]), target=args.target)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if table["dataset"].nunique() < 2:
        print(f"error: leave-one-dataset-out needs at least 2 datasets, got {table['dataset'].nunique()}",
              file=sys.stderr)
        return 2
    result = nested_lodo_evaluate(table, _choices(args), seeds=range(args.seed, args.seed + args.repeats),
                                  inner_folds=args.inner_folds, portfolio_k=args.portfolio_k,
                                  fixed={"plain_hgb": PLAIN_HGB, **({"plain_hgb_stated": PLAIN_HGB_STATED}
                                                                    if stated_meta_feature_columns(table) else {})})
    result.noise_floor = noise
    report = write_nested_report(result, args.out, note=args.note)
    print(result.summary.round(4).to_string())
    print(f"\nwarm start from: {result.decision['source']}; report: {report} ({time.time() - t0:.0f} s)")
    return 0


def _choices(args: argparse.Namespace):
    from .evaluate import default_choices

    choices = default_choices(args.methods)
    return [c for c in choices if not c.drop_uninformative] if args.keep_uninformative else choices


def _fit(args: argparse.Namespace) -> int:
    from .evaluate import ModelChoice, default_model_params, select_choice
    from .recommender import Recommender

    try:
        table = _load_table(args)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if table.empty:
        print("error: no usable records", file=sys.stderr)
        return 2
    info = {"target": args.target, "records": [str(p) for p in args.records],
            "teacher_features": bool(args.teacher_features)}
    if args.method == "auto" and table["dataset"].nunique() >= 2:
        choice, inner = select_choice(table, _choices(args), inner_folds=args.inner_folds, random_state=args.seed)
        info["inner_cv_regret1"] = inner.to_dict()
    else:
        method = "hgb" if args.method == "auto" else args.method
        choice = ModelChoice(method, tuple(sorted(default_model_params(method).items())), not args.keep_uninformative)
    rows = choice.fit_rows(table)
    info.update(choice=choice.label, left_out_uninformative=sorted(set(table["dataset"]) - set(rows["dataset"])))
    rec = Recommender.fit(rows, method=choice.method, random_state=args.seed, model_params=dict(choice.params),
                          info=info, target=args.target)
    rec.save(args.out)
    if args.evaluation:
        _store_decision(args.evaluation, args.out)
    print(f"meta-model ({choice.label}; {len(rows)} rows, {rows['dataset'].nunique()} datasets, "
          f"{rows['candidate'].nunique()} candidates) saved to {args.out}")
    return 0


def _store_decision(evaluation: Path, model_dir: Path) -> Path:
    from .warm_start import write_decision

    decision = json.loads((Path(evaluation) / "decision.json").read_text(encoding="utf-8"))
    return write_decision(model_dir, decision["portfolio"], decision["k"], decision["comparison"],
                          decision.get("note", ""))


def _decide(args: argparse.Namespace) -> int:
    try:
        path = _store_decision(args.evaluation, args.model)
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"warm start from: {json.loads(path.read_text(encoding='utf-8'))['source']} ({path})")
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
    from ..config import ConfigError, PipelineConfig, load_config, with_pipeline
    from ..data import DataError, bundled_dataset_path
    from ..models import ModelLoadError
    from .model_files import ModelVersionError
    from .recommend import recommend_for
    from .warm_start import read_decision

    t0 = time.time()
    try:
        constraints = _parse_constraints(args.constraint) or None
        cfg = load_config(args.config) if args.config else PipelineConfig()
        data = args.data or str(bundled_dataset_path())
        updates = {"train": data, **({"validation": args.validation} if args.validation else {})}
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update=updates)})
        rec, recs, feats = recommend_for(cfg.data, args.model or DEFAULT_MODEL_DIR,
                                         args.top_k, backbone=cfg.teacher.backbone,
                                         embeddings=not args.no_backbone, constraints=constraints, budget=cfg)
    except (FileNotFoundError, ModelVersionError, ConfigError, DataError, ModelLoadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    seconds = time.time() - t0
    if args.json:
        print(json.dumps({"dataset": data, "meta_features": feats, "seconds": round(seconds, 2),
                          "recommendations": [r.to_dict() for r in recs],
                          "top_config": with_pipeline(cfg, recs[0].config).to_dict() if recs else None},
                         indent=2, default=str))
        return 0
    decision = read_decision(args.model or DEFAULT_MODEL_DIR)
    if decision and decision.get("source") == "portfolio":
        print(f"note: the evaluation did not find this ranking better than the best-of-{decision['k']} portfolio; "
              f"`auto` and the service warm-start from {', '.join(decision['portfolio'])}\n")
    print(f"top {len(recs)} pipelines for {data} (predicted {rec.target}; {seconds:.1f} s):")
    for r in recs:
        print(f"{r.rank:>2}. {r.candidate:<32} predicted {r.predicted_score:.4f} ± {r.uncertainty:.4f}")
    if recs:
        near = ", ".join(f"{n['dataset']} ({n['distance']:.2f})" for n in recs[0].why["nearest_datasets"])
        feats_txt = ", ".join(f["feature"] for f in recs[0].why["top_features"])
        print(f"\nnearest datasets in the meta-dataset: {near}\nfeatures that mattered most: {feats_txt}")
        print("\nthe top pipeline on your data and budget (use it with `autodistill distill --config`):")
        print(json.dumps(with_pipeline(cfg, recs[0].config).to_dict(), indent=1))
    return 0
