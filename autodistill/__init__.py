"""AutoDistiller: knowledge distillation engine, search and recommender for text classifiers."""
__version__ = "0.1.0"

# What a KD run computes, for records made by different code to be told apart (each run's metrics carry it).
# 1: up to 2026-12-04.
# 2 (issue 18): RW-KD's look-ahead optimises the step's own objective (KD subset, teacher mix, objective
#    adaptation; teacher outputs computed once per step); objective adaptation's REP mapping gets the
#    epoch/step hooks and the EMD flow; the REP weight is dynamic.rep_weight alone (not x
#    loss.prediction.weight, not x λ); MixKD mixes token-type embeddings of sentence pairs; mapping
#    `last` follows Distiller's PKD-Last (i, L_T - L_S + i), i = 0..L_S; the static-neighbour augmenter
#    is `embedding_neighbour` (`contextual` needs a masked LM). Affected portfolio candidates:
#    autodistill.meta.portfolio.CHANGED_IN_ENGINE_VERSION.
ENGINE_VERSION = 2
