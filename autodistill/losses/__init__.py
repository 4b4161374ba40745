"""KD losses: prediction-layer losses, MI bounds and critics, intermediate-layer objectives."""
from autodistill.losses.intermediate import (
    INTERMEDIATE_OBJECTIVES,
    IntermediateDistillation,
    IntermediateObjective,
    build_intermediate,
    build_representation,
    normalized_rep_mse,
    pool_teacher,
)
from autodistill.losses.prediction import PREDICTION_LOSSES, PredictionLoss, build_prediction_loss

__all__ = [
    "INTERMEDIATE_OBJECTIVES",
    "IntermediateDistillation",
    "IntermediateObjective",
    "PREDICTION_LOSSES",
    "PredictionLoss",
    "build_intermediate",
    "build_representation",
    "build_prediction_loss",
    "normalized_rep_mse",
    "pool_teacher",
]
