"""The AutoDistiller REST service (FastAPI): see service/README.md."""
from .app import create_app
from .settings import ServiceSettings

__all__ = ["create_app", "ServiceSettings"]
