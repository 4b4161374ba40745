"""The verdict that ends `auto` and `search`: what the user got, how good and how fast it is, where it
came from and what the budget was spent on."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from ..config import PipelineConfig
from ..progress import clock
from ..records import RecordStore, RunRecord
from .driver import ANCHOR_ID, SearchResult


def uses_kd(cfg: PipelineConfig) -> bool:
    """False for a student fine-tuned on the hard labels alone (the no-KD reference)."""
    return not (cfg.loss.prediction.weight == 0 and cfg.loss.intermediate.objective == "none"
                and not cfg.mixup.enabled and not cfg.augmentation.augmenters and cfg.weighting.strategy == "none"
                and not cfg.dynamic.objective_adaptation)


def _completed_records(result: SearchResult) -> list[RunRecord]:
    return [r for r in RecordStore(result.records_path).read()
            if r.status == "completed" and (r.search or {}).get("experiment") == str(result.experiment_path)]


def no_kd_reference(result: SearchResult) -> dict[str, Any] | None:
    """The completed student trained without KD with the best dev score in this search, if one was (its
    validation score is shown; like the best student, it is chosen on the dev slice, not on validation)."""
    refs = [r for r in _completed_records(result) if not uses_kd(r.pipeline_config)]
    if not refs:
        return None
    best = max(refs, key=lambda r: r.metrics["best_dev_score"])
    return {"trial_id": best.search.get("trial_id"), "score": best.metrics["student_score"],
            "dev_score": best.metrics["best_dev_score"]}


def measure_latency(result: SearchResult, n: int = 32) -> dict[str, float] | None:
    """CPU latency per example (batch 1) of the best student and the teacher, side by side, on the
    first ``n`` validation examples."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..batching import encode_texts
    from ..evaluation import cpu_latency_ms

    if result.best_dir is None or result.teacher is None or result.teacher.path is None:
        return None
    student_dir = result.best_dir / "student"
    task = result.teacher.task
    tok = AutoTokenizer.from_pretrained(student_dir)
    cfg = PipelineConfig.model_validate(_yaml(result.best_dir / "config.yaml"))
    v = task.validation
    split = encode_texts(tok, v.text_a[:n], v.text_b[:n] if v.text_b is not None else None, v.labels[:n],
                         cfg.data.max_length, task.task_type)
    pad = tok.pad_token_id or 0
    student = AutoModelForSequenceClassification.from_pretrained(student_dir)
    teacher = AutoModelForSequenceClassification.from_pretrained(result.teacher.path, use_safetensors=True)
    # alternated, best of two each: a load spike on a shared machine must not decide the ratio
    t_ms, s_ms = math.inf, math.inf
    for _ in range(2):
        t_ms = min(t_ms, cpu_latency_ms(teacher, split, pad, n))
        s_ms = min(s_ms, cpu_latency_ms(student, split, pad, n))
    return {"teacher_ms": t_ms, "student_ms": s_ms, "speedup": t_ms / max(s_ms, 1e-9)}


def _yaml(path: Path) -> dict[str, Any]:
    import yaml
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def build_verdict(result: SearchResult, latency: bool = True) -> dict[str, Any]:
    """Everything the closing lines say, as data (also written to ``OUT/verdict.json``)."""
    v: dict[str, Any] = {"student": None, "failure": result.failure, "interrupted": result.interrupted,
                         "budget": result.budget}
    rows = result.trials
    v["trials"] = {s: sum(r["status"] == s for r in rows if r["trial_id"] != ANCHOR_ID)
                   for s in ("completed", "stopped_early", "error", "no result", "unfinished")}
    if result.anchor:
        beat = [r for r in rows if r["trial_id"] != ANCHOR_ID and r["status"] == "completed"
                and r["dev_score"] is not None and r["dev_score"] > result.anchor["dev_score"]]
        v["anchor"] = {"score": result.anchor["score"], "dev_score": result.anchor["dev_score"],
                       "origin": result.anchor.get("origin"),
                       "seconds": result.anchor["seconds"], "beaten_by": len(beat)}
    teacher = result.teacher
    if teacher is not None:
        rep = teacher.task.report
        v["data"] = {"train_rows": len(teacher.task.train), "validation_rows": len(teacher.task.validation),
                     "subsample": rep.subsample, "validation_source": rep.validation_source}
        v["teacher"] = {"score": teacher.score, "from_cache": teacher.from_cache, "seconds": teacher.seconds,
                        "training": {k: teacher.training.get(k) for k in ("steps", "epochs", "stop_reason")}}
    if result.best_dir is not None:
        metrics = json.loads((result.best_dir / "metrics.json").read_text(encoding="utf-8"))
        v["student"] = {
            "path": str(result.best_dir), "score": result.best_score, "dev_score": (result.best or {}).get("dev_score"),
            "metric": metrics["metric"],
            "ratio": result.best_score / result.teacher_score if result.teacher_score else None,
            "origin": (result.best or {}).get("origin"), "trial_id": (result.best or {}).get("trial_id"),
            "parameters": metrics["student_parameters"], "teacher_parameters": metrics["teacher_parameters"],
            "dev_examples": metrics.get("dev_examples"), "train_examples": metrics.get("train_examples"),
            "steps": metrics.get("steps"), "stop_reason": metrics.get("stop_reason"),
        }
        v["no_kd"] = no_kd_reference(result)
        if latency:
            v["latency"] = measure_latency(result)
    return v


def _origin(s: Mapping[str, Any]) -> str:
    if s["trial_id"] == ANCHOR_ID:
        return f"{s['origin']} (trained first, to completion, outside ASHA)"
    if not s.get("origin") or s["origin"] == "TPE":
        return f"search trial {s['trial_id']} (sampled by TPE)"
    return f"search trial {s['trial_id']}, seeded with {s['origin']}"


def format_verdict(v: Mapping[str, Any]) -> str:
    lines = ["", "== verdict =="]
    s = v.get("student")
    if s is None:
        lines.append(f"no student: {v.get('failure') or 'none completed'}")
        return "\n".join(lines)
    ratio = f" = {100 * s['ratio']:.1f} % of the teacher's {v['teacher']['score']:.4f}" if s.get("ratio") else ""
    lines += [
        f"best student   {s['path']}/student  (Hugging Face folder; metrics.json and config.yaml beside it)",
        f"score          {s['metric']} {s['score']:.4f} on validation ({v['data']['validation_rows']} rows){ratio}",
        f"chosen by      its dev score {s['dev_score']:.4f} (the dev slice held out of train; the validation "
        "score never chooses, so it is not inflated by the choice)",
        f"came from      {_origin(s)}",
    ]
    a = v.get("anchor")
    t = v["trials"]
    tried = t["completed"] + t["stopped_early"] + t["error"]
    if a:
        lines.append(f"search         {tried} trials after the recommendation ({t['completed']} completed, "
                     f"{t['stopped_early']} stopped early by ASHA, {t['error']} failed); {a['beaten_by']} beat "
                     f"the recommendation's dev score {a['dev_score']:.4f} (its validation {a['score']:.4f})")
    else:
        lines.append(f"search         {t['completed']} completed, {t['stopped_early']} stopped early by ASHA, "
                     f"{t['error']} failed")
    nk = v.get("no_kd")
    lines.append(f"without KD     {nk['score']:.4f} (trial {nk['trial_id']}, the best dev score without KD)" if nk
                 else "without KD     not trained in this search")
    lines.append(f"size           {s['parameters'] / 1e6:.1f} M parameters vs the teacher's "
                 f"{s['teacher_parameters'] / 1e6:.1f} M ({s['parameters'] / s['teacher_parameters']:.2f}x)")
    lat = v.get("latency")
    if lat:
        lines.append(f"CPU latency    {lat['student_ms']:.1f} ms vs the teacher's {lat['teacher_ms']:.1f} ms per "
                     f"example (batch 1, measured now side by side): {lat['speedup']:.1f}x faster")
    d = v["data"]
    rows = (f"a subsample: {d['subsample']}" if d.get("subsample")
            else f"all {d['train_rows']} training rows")
    lines.append(f"data           {rows}; of these {s.get('dev_examples')} form the dev slice for early "
                 f"stopping; validation: {'the given file' if d['validation_source'] == 'file' else d['validation_source']}")
    b, te = v["budget"], v["teacher"]
    how = "loaded from the cache" if te["from_cache"] else (
        f"fine-tuned {te['training'].get('steps')} steps, stopped by {te['training'].get('stop_reason')}")
    budget = f" of the {b['time_budget_s']:.0f} s budget" if b.get("time_budget_s") else ""
    lines.append(f"time           teacher {clock(te['seconds']).strip()} ({how}, not counted in the budget); "
                 f"students {clock(b['student_seconds']).strip()}{budget}")
    return "\n".join(lines)
