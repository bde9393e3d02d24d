"""The HTTP API (FastAPI on uvicorn) over the producer's ImageGenClient: docs/api.md."""

from api.app import create_app

__all__ = ["create_app"]
