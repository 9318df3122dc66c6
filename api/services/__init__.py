"""Domain services behind the routes: they validate, read and write the store, nothing else."""

from api.services.models import ModelService

__all__ = ["ModelService"]
