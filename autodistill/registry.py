"""Name -> component registries: every component of a KD pipeline is named here and built by name.

Each registry declares its component names (in the order the config lists them); the engine modules
register the implementations with ``@REGISTRY.register(name)`` and the typed config
(:mod:`autodistill.config`) takes its choices from :meth:`Registry.literal`, so a name exists in one
place: a registered name that is not declared, or a declared name without an implementation
(:meth:`Registry.unimplemented`, checked by the tests), is an error. ``off`` is the config's value for
"no component" (``none``); it is a choice of the config, never a registered name.
"""
from __future__ import annotations

from typing import Callable, Generic, Literal, Sequence, TypeVar

T = TypeVar("T")


class UnknownComponent(KeyError, ValueError):
    """A name no registry declares; the message lists the registered names."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    def __init__(self, kind: str, names: Sequence[str], *, off: str | None = None):
        self.kind = kind
        self.declared = tuple(names)
        self.off = off
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        if name not in self.declared:
            raise UnknownComponent(f"{self.kind} {name!r} is not declared in autodistill.registry "
                                   f"(declared: {list(self.declared)})")

        def decorate(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj
        return decorate

    def get(self, name: str) -> T:
        if name not in self.declared:
            raise UnknownComponent(f"unknown {self.kind} {name!r}; known: {self.names()}")
        try:
            return self._items[name]
        except KeyError:
            raise LookupError(f"{self.kind} {name!r} has no implementation: the engine module that registers "
                              f"it was not imported") from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self.declared)

    def choices(self) -> tuple[str, ...]:
        """What the config accepts, in its order: ``off`` first (when the component may be absent)."""
        return ((self.off,) if self.off is not None else ()) + self.declared

    def literal(self):
        """The config's field type: ``Literal[*choices()]`` (its JSON schema lists them)."""
        return Literal[self.choices()]

    def unimplemented(self) -> list[str]:
        return [name for name in self.declared if name not in self._items]

    def __contains__(self, name: str) -> bool:
        return name in self.declared


# --------------------------------------------------------------------------- the registries
#: prediction-layer KD losses on logits (autodistill.losses.prediction)
PREDICTION_LOSSES: Registry = Registry("prediction loss", ("kl", "soft_ce", "mse", "annealing"))
#: intermediate-layer objectives (autodistill.losses.intermediate)
INTERMEDIATE_OBJECTIVES: Registry = Registry(
    "intermediate objective",
    ("mse", "hidden_ce", "cos", "pkd", "infonce", "nwj", "tuba", "mi_alpha", "rail_l", "rail_c"), off="none")
#: student -> teacher layer mappings (autodistill.mappings)
LAYER_MAPPINGS: Registry = Registry("layer mapping", ("skip", "last", "uniform", "emd", "random", "custom"))
#: text augmenters (autodistill.augmentation.text)
AUGMENTERS: Registry = Registry("augmenter", ("random", "mask", "embedding_neighbour", "contextual",
                                              "backtranslation"))
#: critic families of the MI-alpha objective (autodistill.losses.critics)
CRITICS: Registry = Registry("critic", ("mlp", "transformer"))
#: per-sample CE/KD balance (autodistill.weighting)
WEIGHTINGS: Registry = Registry("weighting strategy", ("fixed", "linear", "cosine", "rw_kd"), off="none")
#: Dynamic KD data selection (autodistill.dynamic); ``none`` keeps every sample
KD_SELECTIONS: Registry = Registry("selection strategy", ("none", "entropy", "margin", "least_confidence", "random"))
#: Dynamic KD teacher adoption (autodistill.dynamic); ``none`` distils from the first teacher alone
TEACHER_ADOPTIONS: Registry = Registry("adoption mode", ("none", "hard", "soft", "soft_instance"))
#: task metrics (autodistill.metrics); the config's ``auto`` picks one by task type
METRICS: Registry = Registry("metric", ("accuracy", "f1", "macro_f1", "mcc", "pearson", "spearman"), off="auto")

ALL: tuple[Registry, ...] = (PREDICTION_LOSSES, INTERMEDIATE_OBJECTIVES, LAYER_MAPPINGS, CRITICS, AUGMENTERS,
                             WEIGHTINGS, KD_SELECTIONS, TEACHER_ADOPTIONS, METRICS)
