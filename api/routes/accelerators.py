"""``/v1/accelerators``: the card inventory, and quarantining or releasing a card. Admin only."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from api.accelerators import Inventory
from api.deps import AdminDep, in_store
from api.errors import StoreUnavailableError
from api.schemas import AcceleratorInventory, CardChange, CardQuarantine

router = APIRouter(tags=["accelerators"])

Node = Annotated[str, Path(min_length=1, max_length=253, description="the node's name")]
Index = Annotated[int, Path(ge=0, le=1023, description="the card's index on its node")]


def _inventory(request: Request) -> Inventory:
    inventory: Inventory | None = getattr(request.app.state, "accelerators", None)
    if inventory is None:
        raise StoreUnavailableError(
            "the local accelerator inventory is kept by the process that runs the "
            "model-job-executor on this machine (aif serve, aif model-job-executor)"
        )
    return inventory


@router.get("/v1/accelerators", response_model=AcceleratorInventory)
async def list_accelerators(_: AdminDep, request: Request) -> dict[str, Any]:
    """Every card (free, allocated to a model's instance, or quarantined) with totals per
    resource type and per node. On a cluster, read from its nodes and pods (cached a few s)."""
    return await in_store(request, _inventory(request).view)


@router.post("/v1/accelerators/{node}/{index}/quarantine", response_model=CardChange)
async def quarantine_card(
    node: Node, index: Index, body: CardQuarantine, admin: AdminDep, request: Request
) -> CardChange:
    """Take a card out of service: no new instance is placed on it until it is released."""
    inventory = _inventory(request)
    await in_store(request, inventory.quarantine, node, index, body.reason, admin.key_id)
    return CardChange(node=node, index=index, state="quarantined", changed=True)


@router.post("/v1/accelerators/{node}/{index}/release", response_model=CardChange)
async def release_card(node: Node, index: Index, admin: AdminDep, request: Request) -> CardChange:
    """Put a quarantined card back in service (``changed`` false if it was not quarantined)."""
    inventory = _inventory(request)
    changed = await in_store(request, inventory.release, node, index, admin.key_id, "by an admin")
    state = await in_store(request, inventory.state, node, index)
    return CardChange(node=node, index=index, state=state, changed=changed)
