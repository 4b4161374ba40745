"""The REST routes, one router per resource: ``health`` (/healthz), ``datasets``, ``recommendations``,
``searches`` and ``meta_model`` (/meta-model/refit); ``common`` holds the dependencies and helpers they
share. ``ROUTERS`` is the order ``create_app`` includes them in (the OpenAPI document's order)."""
from . import datasets, health, meta_model, recommendations, searches

ROUTERS = (health.router, datasets.router, recommendations.router, searches.router, meta_model.router)
