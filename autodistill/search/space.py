"""Search spaces as data: YAML files over :class:`~autodistill.config.PipelineConfig`.

A space file::

    name: cpu-fast
    description: ...
    base: {partial PipelineConfig applied to every trial}
    budget: {trials: 10, time_budget_s: 900, max_concurrent_trials: 2, cpus_per_trial: 1, ...}
    params:
      - {name: loss.prediction.type, choices: [kl, soft_ce, mse]}
      - {name: optim.learning_rate, float: [1.0e-5, 1.0e-3], log: true}
      - {name: optim.epochs, int: [1, 3]}
      - {name: loss.intermediate.alpha, choices: [0.1, 0.5, 0.9],
         when: {loss.intermediate.objective: [mi_alpha]}}

``name`` is a dotted path into the config model (numeric segments index lists, e.g.
``teachers.0.learning_rate``). ``when`` makes a parameter conditional on earlier parameters: it is
sampled only when every listed parameter took one of the listed values, otherwise the base/default
value applies. Every path, choice and bound is checked against the config model when the space is
loaded; an invalid space raises :class:`SpaceError` naming the entry (index and name).
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, get_args, get_origin

import yaml
from pydantic import BaseModel

from ..config import ConfigError, PipelineConfig, deep_merge, parse_config
from ..records import canonical_json, config_hash
from ..resources import ResourceError, resolve_gpus_per_trial

PRESET_DIR = Path(__file__).resolve().parents[2] / "search_spaces"
PRIMITIVES = (str, int, float, bool, type(None))


class SpaceError(ValueError):
    """An invalid search space; the message names the entry (``params[i] (name)``)."""


# --------------------------------------------------------------------------- budget
@dataclass
class Budget:
    trials: int = 10
    time_budget_s: float | None = None
    max_concurrent_trials: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None   # None: one GPU per trial on a cluster with GPUs, none without
    resources: dict[str, float] = field(default_factory=dict)   # custom Ray resources a trial needs
    memory_gb_per_trial: float | None = None   # Ray memory a trial asks for, and the most it may hold (it fails above)
    grace_period: int = 1           # ASHA: evaluations before a trial can be stopped
    reduction_factor: float = 2.0   # ASHA
    max_t: int = 100                # ASHA: most evaluations a trial can report
    max_failures: int = 1           # retries of a failed trial
    reuse_actors: bool = True
    seed: int = 0                   # TPE sampler seed

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "Budget":
        data = dict(data or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpaceError(f"budget: unknown key(s) {unknown}; known: {sorted(known)}")
        if not isinstance(data.get("resources", {}), Mapping):
            raise SpaceError("budget.resources: a mapping of Ray resource name -> amount per trial")
        b = cls(**data)
        try:   # shape only (fraction or whole GPUs): whether the cluster has them is known at run time
            resolve_gpus_per_trial(b.gpus_per_trial, {"GPU": max(1.0, float(b.gpus_per_trial or 0))})
        except ResourceError as err:
            raise SpaceError(f"budget: {err}") from None
        if b.memory_gb_per_trial is not None and not b.memory_gb_per_trial > 0:
            raise SpaceError(f"budget: memory_gb_per_trial={b.memory_gb_per_trial}: must be > 0 (GiB)")
        if b.trials < 1 or b.max_concurrent_trials < 1:
            raise SpaceError("budget: trials and max_concurrent_trials must be >= 1")
        if b.reduction_factor <= 1 or b.grace_period < 1 or b.max_t < b.grace_period:
            raise SpaceError("budget: need reduction_factor > 1, grace_period >= 1, max_t >= grace_period")
        return b


# --------------------------------------------------------------------------- params
@dataclass
class Param:
    index: int
    name: str
    kind: str                                    # "choices" | "float" | "int"
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    when: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"params[{self.index}] ({self.name})"

    @property
    def encoded(self) -> bool:
        """Complex choices (lists, dicts) go to Optuna as canonical JSON strings."""
        return self.kind == "choices" and not all(isinstance(c, PRIMITIVES) for c in self.choices)

    def encode(self, value: Any) -> Any:
        if not self.encoded:
            return value
        if isinstance(value, str) and value in self._encoded_choices():
            return value
        return canonical_json(value)

    def decode(self, value: Any) -> Any:
        if self.encoded and isinstance(value, str):
            return json.loads(value)
        return value

    def _encoded_choices(self) -> list[str]:
        return [canonical_json(c) for c in self.choices]

    def contains(self, value: Any) -> bool:
        if self.kind == "choices":
            return canonical_json(self.decode(value)) in self._encoded_choices()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and int(value) != value:
            return False
        return self.low <= value <= self.high

    def sample_values(self) -> list[Any]:
        """Values that must all produce a valid config (every choice, both bounds)."""
        if self.kind == "choices":
            return list(self.choices)
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]

    def suggest(self, trial) -> Any:
        if self.kind == "choices":
            options = self._encoded_choices() if self.encoded else list(self.choices)
            return trial.suggest_categorical(self.name, options)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)


# --------------------------------------------------------------------------- config paths
def _resolve_annotation(annotation: Any) -> Any:
    """Strip Optional/Annotated down to the model or list type a path can descend into."""
    origin = get_origin(annotation)
    if origin is None:
        return annotation
    args = [a for a in get_args(annotation) if a is not type(None)]
    if origin is list:
        return annotation
    if getattr(origin, "__name__", "") == "Annotated" or str(origin).endswith("Annotated"):
        return _resolve_annotation(args[0])
    if len(args) == 1:
        return _resolve_annotation(args[0])
    return annotation


def check_path(path: str) -> None:
    """Raise ValueError unless ``path`` names a field of PipelineConfig."""
    model: Any = PipelineConfig
    parts = path.split(".")
    for k, part in enumerate(parts):
        ann = _resolve_annotation(model)
        if get_origin(ann) is list or get_origin(ann) is tuple:
            if not part.isdigit():
                raise ValueError(f"'{'.'.join(parts[:k])}' is a list: the next segment must be an index")
            model = get_args(ann)[0] if get_args(ann) else Any
            continue
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if part not in ann.model_fields:
                where = ".".join(parts[:k]) or "the config root"
                raise ValueError(f"no field {part!r} in {where} (fields: {sorted(ann.model_fields)})")
            model = ann.model_fields[part].annotation
            continue
        raise ValueError(f"'{'.'.join(parts[:k])}' is a value, it has no field {part!r}")


def set_path(data: dict, path: str, value: Any) -> None:
    parts = path.split(".")
    node: Any = data
    for k, part in enumerate(parts[:-1]):
        nxt = parts[k + 1]
        if isinstance(node, list):
            i = int(part)
            while len(node) <= i:
                node.append({})
            if node[i] is None:
                node[i] = {}
            node = node[i]
        else:
            if node.get(part) is None:
                node[part] = [] if nxt.isdigit() else {}
            node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        i = int(last)
        while len(node) <= i:
            node.append({})
        node[i] = copy.deepcopy(value)
    else:
        node[last] = copy.deepcopy(value)


def get_path(data: Any, path: str) -> tuple[bool, Any]:
    """(found, value) at a dotted path of a config dict (list segments are indices)."""
    node = data
    for part in path.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return False, None
    return True, node


def _snap(p: "Param", value: Any) -> Any:
    """``value`` if the space holds it, else the nearest value it holds (numbers only), else None."""
    if p.contains(value):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if p.kind == "choices":
        numeric = [c for c in p.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        return min(numeric, key=lambda c: abs(c - value)) if numeric else None
    clipped = min(max(value, p.low), p.high)
    return int(round(clipped)) if p.kind == "int" else float(clipped)


def _dotted_updates(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for k, v in flat.items():
        set_path(out, k, v)
    return out


# --------------------------------------------------------------------------- the space
class SearchSpace:
    """A validated search space. Also the define-by-run function: ``space(optuna_trial)``."""

    def __init__(self, name: str, description: str, base: dict, budget: Budget, params: list[Param],
                 source: str = "<dict>"):
        self.name = name
        self.description = description
        self.base = base
        self.budget = budget
        self.params = params
        self.source = source
        self._by_name = {p.name: p for p in params}

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>", validate: bool = True) -> "SearchSpace":
        if not isinstance(data, Mapping):
            raise SpaceError(f"{source}: a search space must be a mapping")
        unknown = sorted(set(data) - {"name", "description", "base", "budget", "params"})
        if unknown:
            raise SpaceError(f"{source}: unknown top-level key(s) {unknown}")
        base = data.get("base") or {}
        if not isinstance(base, dict):
            raise SpaceError(f"{source}: base must be a mapping (a partial pipeline config)")
        try:
            parse_config(base, source=f"{source} base")
        except ConfigError as err:
            raise SpaceError(f"{source}: base: {err}") from None
        params_raw = data.get("params") or []
        if not isinstance(params_raw, list):
            raise SpaceError(f"{source}: params must be a list")
        params: list[Param] = []
        seen: set[str] = set()
        for i, entry in enumerate(params_raw):
            p = _parse_param(i, entry, {q.name: q for q in params}, source)
            if p.name in seen:
                raise SpaceError(f"{source}: {p.label}: duplicate parameter name")
            seen.add(p.name)
            params.append(p)
        space = cls(str(data.get("name") or Path(source).stem), str(data.get("description") or ""),
                    base, Budget.from_dict(data.get("budget")), params, source)
        if validate:
            space.validate()
        return space

    @classmethod
    def load(cls, name_or_path: str | Path) -> "SearchSpace":
        """A preset name (``full``, ``distiller``, ``cpu-fast``) or a YAML file path."""
        path = Path(name_or_path)
        if not path.is_file():
            preset = PRESET_DIR / f"{name_or_path}.yaml"
            if not preset.is_file():
                names = ", ".join(preset_names()) or "none"
                raise SpaceError(f"search space {str(name_or_path)!r}: no such file or preset (presets: {names})")
            path = preset
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise SpaceError(f"{path}: not valid YAML: {err}") from None
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict:
        params = []
        for p in self.params:
            d: dict[str, Any] = {"name": p.name}
            if p.kind == "choices":
                d["choices"] = p.choices
            else:
                d[p.kind] = [p.low, p.high]
                if p.log:
                    d["log"] = True
            if p.when:
                d["when"] = p.when
            params.append(d)
        return {"name": self.name, "description": self.description, "base": self.base,
                "budget": dict(self.budget.__dict__), "params": params}

    def with_base(self, overrides: Mapping[str, Any]) -> "SearchSpace":
        """The same space with ``overrides`` (a partial config) merged into ``base``; re-validated."""
        data = self.to_dict()
        data["base"] = deep_merge(self.base, overrides)
        return SearchSpace.from_dict(data, source=self.source)

    def with_budget(self, **changes: Any) -> "SearchSpace":
        data = self.to_dict()
        data["budget"].update({k: v for k, v in changes.items() if v is not None})
        return SearchSpace.from_dict(data, source=self.source, validate=False)

    # ---------------------------------------------------------------- validation
    def _conditions_for(self, p: Param) -> dict[str, Any]:
        """Values (first allowed) that make ``p`` active, including its conditions' own conditions."""
        values: dict[str, Any] = {}
        todo = list(p.when.items())
        while todo:
            dep, allowed = todo.pop(0)
            if dep in values:
                continue
            values[dep] = allowed[0]
            todo.extend(self._by_name[dep].when.items())
        return values

    def validate(self) -> None:
        for p in self.params:
            conds = self._conditions_for(p)
            for value in p.sample_values():
                flat = {**conds, p.name: value}
                data = deep_merge(self.base, _dotted_updates(flat))
                try:
                    PipelineConfig.model_validate(data)
                except Exception as err:  # pydantic ValidationError or a model_validator ValueError
                    msg = str(err).splitlines()
                    detail = "; ".join(line.strip() for line in msg[1:3]) or str(err)
                    raise SpaceError(f"{self.source}: {p.label}: value {value!r} gives an invalid config"
                                     f"{' (with ' + str(conds) + ')' if conds else ''}: {detail}") from None

    # ---------------------------------------------------------------- sampling
    def active(self, p: Param, values: Mapping[str, Any]) -> bool:
        for dep, allowed in p.when.items():
            if dep not in values:
                return False
            got = canonical_json(self._by_name[dep].decode(values[dep]))
            if got not in [canonical_json(a) for a in allowed]:
                return False
        return True

    def __call__(self, trial) -> None:
        """Define-by-run for Optuna: suggest only the parameters active under earlier choices."""
        values: dict[str, Any] = {}
        for p in self.params:
            if self.active(p, values):
                values[p.name] = p.suggest(trial)
        return None

    def decode(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Sampled (possibly encoded) params -> real values, keeping only active known params."""
        out: dict[str, Any] = {}
        for p in self.params:
            if p.name in params and self.active(p, out):
                out[p.name] = p.decode(params[p.name])
        return out

    def encode(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Real values (e.g. a warm-start config) -> what Optuna sees; checks names and ranges."""
        unknown = sorted(set(params) - set(self._by_name))
        if unknown:
            raise SpaceError(f"{self.source}: unknown parameter(s) {unknown}")
        out: dict[str, Any] = {}
        decoded: dict[str, Any] = {}
        for p in self.params:
            if p.name not in params or not self.active(p, decoded):
                continue
            if not p.contains(params[p.name]):
                raise SpaceError(f"{p.label}: value {params[p.name]!r} is outside the space")
            decoded[p.name] = p.decode(params[p.name])
            out[p.name] = p.encode(params[p.name])
        return out

    def params_from_config(self, config: PipelineConfig | Mapping[str, Any]) -> dict[str, Any]:
        """A full pipeline config (e.g. a recommendation) projected onto this space, as a warm-start
        point: each parameter takes the config's value, numbers snapped into the space (clipped to a
        range, or the nearest numeric choice); a value the space cannot express is left out, and the
        sampler chooses it."""
        data = config.to_dict() if isinstance(config, PipelineConfig) else dict(config)
        out: dict[str, Any] = {}
        for p in self.params:
            found, value = get_path(data, p.name)
            if not found or not self.active(p, out):
                continue
            value = self._as_choice(p, value) if p.encoded else _snap(p, value)
            if value is not None or p.contains(value):
                out[p.name] = value
        return out

    def _as_choice(self, p: "Param", value: Any) -> Any:
        """The choice of a structured parameter (e.g. an augmenter list) equal to ``value`` once both
        are filled with the config's defaults, or None."""
        if p.contains(value):
            return value
        target = canonical_json(value)
        for choice in p.choices:
            try:
                cfg = parse_config(deep_merge(self.base, _dotted_updates({p.name: choice})))
            except ConfigError:
                continue
            if canonical_json(get_path(cfg.to_dict(), p.name)[1]) == target:
                return choice
        return None

    def to_config(self, params: Mapping[str, Any]) -> PipelineConfig:
        values = self.decode(params)
        data = deep_merge(self.base, _dotted_updates(values))
        return parse_config(data, source=f"search space {self.name!r} trial config")

    def config_hash(self, cfg: PipelineConfig) -> str:
        return config_hash(cfg)


def _parse_param(i: int, entry: Any, earlier: dict[str, Param], source: str) -> Param:
    label = f"params[{i}]"
    if not isinstance(entry, Mapping):
        raise SpaceError(f"{source}: {label}: must be a mapping with 'name' and one of choices/float/int")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise SpaceError(f"{source}: {label}: missing 'name' (a dotted config path)")
    label = f"params[{i}] ({name})"
    unknown = sorted(set(entry) - {"name", "choices", "float", "int", "log", "when"})
    if unknown:
        raise SpaceError(f"{source}: {label}: unknown key(s) {unknown}")
    try:
        check_path(name)
    except ValueError as err:
        raise SpaceError(f"{source}: {label}: not a config path: {err}") from None
    kinds = [k for k in ("choices", "float", "int") if k in entry]
    if len(kinds) != 1:
        raise SpaceError(f"{source}: {label}: give exactly one of choices / float / int")
    kind = kinds[0]
    p = Param(i, name, kind, log=bool(entry.get("log", False)))
    if kind == "choices":
        choices = entry["choices"]
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{source}: {label}: choices must be a non-empty list")
        if len({canonical_json(c) for c in choices}) != len(choices):
            raise SpaceError(f"{source}: {label}: duplicate choices")
        p.choices = choices
        if p.log:
            raise SpaceError(f"{source}: {label}: log applies to float/int ranges only")
    else:
        bounds = entry[kind]
        if not (isinstance(bounds, list) and len(bounds) == 2
                and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)):
            raise SpaceError(f"{source}: {label}: {kind} must be [low, high]")
        low, high = bounds
        if kind == "int" and (int(low) != low or int(high) != high):
            raise SpaceError(f"{source}: {label}: int bounds must be integers")
        if not low < high:
            raise SpaceError(f"{source}: {label}: need low < high, got [{low}, {high}]")
        if p.log and low <= 0:
            raise SpaceError(f"{source}: {label}: a log range needs low > 0")
        if not (math.isfinite(low) and math.isfinite(high)):
            raise SpaceError(f"{source}: {label}: bounds must be finite")
        p.low, p.high = low, high
    when = entry.get("when") or {}
    if not isinstance(when, Mapping):
        raise SpaceError(f"{source}: {label}: when must map earlier parameter names to allowed values")
    for dep, allowed in when.items():
        if dep not in earlier:
            raise SpaceError(f"{source}: {label}: when refers to {dep!r}, which is not an earlier parameter")
        if not isinstance(allowed, list) or not allowed:
            raise SpaceError(f"{source}: {label}: when.{dep} must be a non-empty list of values")
        for a in allowed:
            if not earlier[dep].contains(a):
                raise SpaceError(f"{source}: {label}: when.{dep} value {a!r} is not in that parameter's space")
    p.when = {k: list(v) for k, v in when.items()}
    return p


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_space(name_or_path: str | Path | SearchSpace | Mapping) -> SearchSpace:
    if isinstance(name_or_path, SearchSpace):
        return name_or_path
    if isinstance(name_or_path, Mapping):
        return SearchSpace.from_dict(name_or_path)
    return SearchSpace.load(name_or_path)


def warm_start_points(space: SearchSpace, configs: Iterable[PipelineConfig | Mapping[str, Any]], n: int
                      ) -> list[dict[str, Any]]:
    """Up to ``n`` distinct warm-start points: full configs (e.g. the recommender's, best first)
    projected onto the space with :meth:`SearchSpace.params_from_config`."""
    return [point for _, point in distinct_points(space, configs, n)]


def distinct_points(space: SearchSpace, configs: Iterable[PipelineConfig | Mapping[str, Any]], n: int,
                    trained: Iterable[PipelineConfig] = ()) -> list[tuple[int, dict[str, Any]]]:
    """(index of the source config, point) for up to ``n`` projections that are complete (every active
    parameter set: what a value the space cannot express becomes is the space's base/default, not a
    sampler's draw, so a point names exactly one student) and distinct as trial configs (two configs
    that differ only where the space cannot follow them would train the same student twice), also from
    the ``trained`` configs (e.g. ``auto``'s anchor, trained before the search)."""
    out, seen = [], {config_hash(cfg) for cfg in trained}
    for k, cfg in enumerate(configs):
        try:
            partial = space.params_from_config(cfg)
            point = space.params_from_config(space.to_config(space.encode(partial)))
            tag = config_hash(space.to_config(space.encode(point)))
        except (SpaceError, ConfigError):
            continue   # a combination the space cannot run
        if tag not in seen:
            seen.add(tag)
            out.append((k, point))
        if len(out) == n:
            break
    return out


def load_warm_start(path: str | Path, space: SearchSpace) -> list[dict[str, Any]]:
    """Seed configs (YAML/JSON list of param dicts in the space's names), encoded for Optuna."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise SpaceError(f"{path}: not valid YAML/JSON: {err}") from None
    if isinstance(data, Mapping) and "configs" in data:
        data = data["configs"]
    if not isinstance(data, list) or not all(isinstance(d, Mapping) for d in data):
        raise SpaceError(f"{path}: expected a list of parameter mappings")
    return encode_points(space, data, source=str(path))


def encode_points(space: SearchSpace, points: Iterable[Mapping[str, Any]], source: str = "warm start"
                  ) -> list[dict[str, Any]]:
    out = []
    for k, point in enumerate(points):
        try:
            enc = space.encode(point)
            space.to_config(enc)
        except (SpaceError, ConfigError) as err:
            raise SpaceError(f"{source}: config {k}: {err}") from None
        out.append(enc)
    return out
