"""Image-generation worker: ``celery -A worker worker`` finds ``app`` here."""

from worker.celery_app import app

celery = app

__all__ = ["app", "celery"]
