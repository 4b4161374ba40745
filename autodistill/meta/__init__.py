"""AutoDistiller recommender: meta-features, meta-dataset, meta-model and its evaluation."""

from pathlib import Path

# The repository's meta_dataset/ folder, where the build and the Distiller import read and write.
META_DATASET_DIR = Path(__file__).resolve().parents[2] / "meta_dataset"
# Copies of the datasets they use (sources and terms in its MANIFEST.md), so the repo is self-contained.
DATASETS_DIR = META_DATASET_DIR / "datasets"
