"""`/metrics` for Prometheus, without a key: the figures are the whole service's, with no
tenant's name in them (see aif.metrics)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, responses={200: {
    "description": "Prometheus text format (docs/observability.md).",
    "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
def metrics(request: Request) -> Response:
    """The service's figures, computed from the job store now; no tenant is named."""
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
