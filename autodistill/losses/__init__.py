"""KD losses: prediction-layer losses, MI bounds and critics, intermediate-layer objectives."""
from autodistill.losses.intermediate import (
    IntermediateDistillation,
    IntermediateObjective,
    build_intermediate,
    build_representation,
    normalized_rep_mse,
)
from autodistill.losses.prediction import PredictionLoss, build_prediction_loss

__all__ = [
    "IntermediateDistillation",
    "IntermediateObjective",
    "PredictionLoss",
    "build_intermediate",
    "build_representation",
    "build_prediction_loss",
    "normalized_rep_mse",
]
