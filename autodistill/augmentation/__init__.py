"""Data augmentation (Distiller stage 1) and MixKD embedding mixup."""
from autodistill.augmentation.mixup import (
    mix_embeddings,
    mix_targets,
    mixed_inputs,
    mixup_permutation,
    sample_mixup_lambda,
    soft_target_cross_entropy,
)
from autodistill.augmentation.text import (
    AugmentationError,
    AugmentationPipeline,
    AugmentationResources,
    Augmenter,
    BackTranslationAugmenter,
    ContextualAugmenter,
    EmbeddingNeighbourAugmenter,
    MaskAugmenter,
    RandomWordAugmenter,
    build_augmentation_pipeline,
    build_augmenter,
)

__all__ = [
    "AugmentationError",
    "AugmentationPipeline",
    "AugmentationResources",
    "Augmenter",
    "BackTranslationAugmenter",
    "ContextualAugmenter",
    "EmbeddingNeighbourAugmenter",
    "MaskAugmenter",
    "RandomWordAugmenter",
    "build_augmentation_pipeline",
    "build_augmenter",
    "mix_embeddings",
    "mix_targets",
    "mixed_inputs",
    "mixup_permutation",
    "sample_mixup_lambda",
    "soft_target_cross_entropy",
]
