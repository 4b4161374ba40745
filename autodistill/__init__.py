"""AutoDistiller: knowledge distillation engine, search and recommender for text classifiers."""
__version__ = "0.1.0"
