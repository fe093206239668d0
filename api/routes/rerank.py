"""POST /v1/rerank: a query and documents → the documents by relevance (broker/wire/rerank.py).

It runs as a job like /v1/embeddings (lanes, limits, budgets, failover, the ledger), on the
deployments of the model whose capabilities say `rerank` (broker/routing/capabilities.py).
"""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import APIRouter

from api import dispatch
from api.direct_route import DirectRoute
from broker.wire.rerank import RerankRequest, rerank_request_decoder

_SCHEMA, _COMPONENTS = msgspec.json.schema_components((RerankRequest,), ref_template="#/components/schemas/{name}")
OPENAPI_COMPONENTS: dict[str, Any] = _COMPONENTS  # merged into the document by api/app.py, with dispatch's

router = APIRouter(route_class=DirectRoute)  # its one route: api/direct_route.py
router.add_api_route("/v1/rerank", dispatch.endpoint(rerank_request_decoder), methods=["POST"],
                     openapi_extra={"requestBody": {"required": True,
                                                    "content": {"application/json": {"schema": _SCHEMA[0]}}}})
