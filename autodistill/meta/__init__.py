"""AutoDistiller recommender: meta-features, meta-dataset, meta-model and its evaluation."""
