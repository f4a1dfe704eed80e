"""GET /webhooks/deliveries (each delivery's attempts, status codes and next try) and
POST /webhooks/deliveries/{id}/resend (a failed delivery, again). Secrets never appear."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status

from app.deps import Authorized
from app.schemas import DeliveryOut, DeliveryPage, ErrorOut

router = APIRouter(tags=["webhooks"], dependencies=[Authorized])


@router.get("/webhooks/deliveries", response_model=DeliveryPage, summary="Webhook deliveries, newest first")
async def list_deliveries(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
    state: Annotated[Literal["pending", "delivered", "failed"] | None, Query()] = None,
    event: Annotated[str | None, Query(max_length=64)] = None,
) -> dict:
    total, rows = await request.app.state.webhooks.outbox.list(limit, offset, state, event)
    return {"total": total, "limit": limit, "offset": offset, "deliveries": rows}


@router.get(
    "/webhooks/deliveries/{delivery_id}",
    response_model=DeliveryOut,
    responses={404: {"model": ErrorOut}},
    summary="One webhook delivery",
)
async def get_delivery(delivery_id: str, request: Request) -> dict:
    row = await request.app.state.webhooks.outbox.get(delivery_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=_unknown(delivery_id))
    return row


@router.post(
    "/webhooks/deliveries/{delivery_id}/resend",
    response_model=DeliveryOut,
    responses={404: {"model": ErrorOut}},
    summary="Send a delivery again now (a failed one, or a pending one without waiting)",
)
async def resend_delivery(delivery_id: str, request: Request) -> dict:
    webhooks = request.app.state.webhooks
    row = await webhooks.outbox.resend(delivery_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=_unknown(delivery_id))
    webhooks.sender.poke()
    return row


def _unknown(delivery_id: str) -> str:
    return "no webhook delivery with that id; GET /webhooks/deliveries lists them"
