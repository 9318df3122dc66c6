"""``aif render``: a register body, validated as the API validates it, as manifests.

The body goes through the very schema ``POST /v1/models`` uses, so ``aif render`` refuses what
the API refuses, in the same words; rendering the objects is :mod:`infra.manifests`'.
"""

from __future__ import annotations

from api.schemas import ModelCreate
from domain.records import Pvc
from domain.settings import ClusterConfig
from infra.manifests import render_spec, render_spec_documents


def render_documents(body: str | bytes, cluster: ClusterConfig) -> str:
    """Multi-document YAML for a ``POST /v1/models`` body, reproducible for the same body.

    Raises pydantic's ``ValidationError`` for a body the API would refuse.
    """
    model = ModelCreate.model_validate_json(body)
    spec = render_spec(
        model.name,
        model.type,
        model.resource_type,
        model.version,
        model.min_instance,
        Pvc(name=model.pvc.name, path=model.pvc.path),
    )
    return render_spec_documents(spec, cluster)
