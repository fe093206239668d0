"""POST /v1/rerank end to end over real HTTP: httpx → broker API → Redis → worker processes → the mock,
the Cohere fake (/v2/rerank), a vLLM-style OpenAI-compatible fake (/v1/rerank) and the Bedrock fake
(InvokeModel for Cohere Rerank 3.5 and Amazon Rerank 1.0, SigV4-checked).

Order, top_n and return_documents, whichever provider serves; failover from a rate-limited
deployment; cost per search unit on the answer and in the ledger; the errors, in OpenAI's shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes.bedrock_sigv4 import Keys
from tests.fakes.bedrock_upstream import REGION, BedrockServer
from tests.fakes.cohere_upstream import CohereServer
from tests.fakes.openai_upstream import UpstreamServer
from tests.fakes.server import FakeServer
from tests.harness import TEST_KEY
from tests.stacks import StackFactory
from tests.test_ledger import row_for, until_counted

COHERE_KEY = "co-rerank-test-key-0123456789"
VLLM_KEY = "sk-vllm-rerank-key-0123456789"
HEADERS = {"authorization": f"Bearer {TEST_KEY}"}
QUERY = "capital of France"
DOCUMENTS: list[Any] = ["Berlin is the capital of Germany", {"text": "Paris is the capital of France"},
                        "France is known for wine", "Bananas are yellow"]
# A cross-encoder served by vLLM: an OpenAI-compatible deployment says it reranks, and at what price.
VLLM_RERANKER = {"provider": "vllm", "model": "BAAI/bge-reranker-v2-m3", "capabilities": {"rerank": True},
                 "per_1k_searches": 1.0}
# Bedrock's rerankers serve /v1/rerank when their deployment says so.
AWS_KEY_ID, AWS_SECRET = "AKIAIOSFODNN7RERANKS", "wJalrXUtnFEMI/K7MDENG/rerankEXAMPLEKEY"
BEDROCK_COHERE = {"provider": "bedrock", "model": "cohere.rerank-v3-5:0", "capabilities": {"rerank": True}}
BEDROCK_AMAZON = {"provider": "bedrock", "model": "amazon.rerank-v1:0", "capabilities": {"rerank": True}}
BEST_FIRST = [1, 0, 2, 3]  # by the words each shares with the query (every fake and the mock score overlap)


@pytest.fixture(scope="module")
def cohere() -> Iterator[FakeServer]:
    with CohereServer(api_key=COHERE_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def vllm() -> Iterator[FakeServer]:
    with UpstreamServer(api_key=VLLM_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def bedrock() -> Iterator[FakeServer]:
    with BedrockServer(Keys(REGION, {AWS_KEY_ID: (AWS_SECRET, None)})) as server:
        yield server


def _bedrock(upstream: FakeServer, secret: str) -> dict[str, Any]:
    return {"kind": "bedrock", "region": REGION, "endpoint_url": upstream.base_url, "access_key_id": AWS_KEY_ID,
            "secret_access_key": secret, "max_retries": 0}


@pytest.fixture(scope="module")
def base_url(module_stack_factory: StackFactory, cohere: FakeServer, vllm: FakeServer, bedrock: FakeServer) -> str:
    providers = {
        "mock": {"kind": "mock"},
        "cohere": {"kind": "cohere", "base_url": cohere.base_url, "api_key": COHERE_KEY, "max_retries": 0},
        "vllm": {"kind": "openai", "profile": "vllm", "base_url": vllm.base_url, "api_key": VLLM_KEY},
        "bedrock": _bedrock(bedrock, AWS_SECRET),
        "bedrock-wrong-key": _bedrock(bedrock, "not-the-secret-access-key"),
    }
    models = {
        "mock-rerank": [{"provider": "mock", "model": "m"}],
        "cohere-rerank": [{"provider": "cohere", "model": "rerank-v3.5"}],  # priced by the shipped table
        "vllm-rerank": [VLLM_RERANKER],
        "limited-then-vllm": [{"provider": "cohere", "model": "fail-429"}, VLLM_RERANKER],
        "billed": [{"provider": "cohere", "model": "rerank-v3.5"}],  # only the ledger test uses it
        "cohere-limited": [{"provider": "cohere", "model": "fail-429@solo"}],  # its own cooldown
        "chat-only": [{"provider": "vllm", "model": "fake-model"}],
        "bedrock-cohere": [BEDROCK_COHERE],  # priced by the shipped table, as the two below
        "bedrock-amazon": [BEDROCK_AMAZON],
        "bedrock-billed": [BEDROCK_AMAZON],  # only the ledger test uses it
        "bedrock-throttled-then-amazon": [{**BEDROCK_COHERE, "model": "cohere.rerank-fake-throttled"},
                                          BEDROCK_AMAZON],
        "bedrock-misconfigured": [{**BEDROCK_COHERE, "provider": "bedrock-wrong-key"}],
        "bedrock-chat-model": [{**BEDROCK_COHERE, "model": "amazon.nova-lite-v1:0"}],
    }
    return module_stack_factory(providers, models).up("mock", "cohere", "vllm", "bedrock", "bedrock-wrong-key")


def rerank(base_url: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{base_url}/rerank", headers=HEADERS, json=body, timeout=30)


@pytest.mark.parametrize("model", ["mock-rerank", "cohere-rerank", "vllm-rerank", "bedrock-cohere", "bedrock-amazon"])
def test_results_come_best_first_cut_to_top_n_with_documents_when_asked(base_url: str, model: str) -> None:
    everything = rerank(base_url, model=model, query=QUERY, documents=DOCUMENTS)
    assert everything.status_code == 200, everything.text
    body = everything.json()
    assert [r["index"] for r in body["results"]] == BEST_FIRST
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True) and all("document" not in r for r in body["results"])
    assert body["model"] == model and body["id"] == "rerank-" + everything.headers["x-request-id"].removeprefix("req_")
    assert body["meta"] == {"billed_units": {"search_units": 1}} and body["usage"]["search_units"] == 1
    assert body["usage"]["total_tokens"] > 0

    top = rerank(base_url, model=model, query=QUERY, documents=DOCUMENTS, top_n=2, return_documents=True).json()
    assert [(r["index"], r["document"]) for r in top["results"]] == [
        (1, {"text": "Paris is the capital of France"}), (0, {"text": "Berlin is the capital of Germany"})]
    clamped = rerank(base_url, model=model, query=QUERY, documents=DOCUMENTS, top_n=50).json()
    assert len(clamped["results"]) == len(DOCUMENTS)


def test_each_upstream_gets_its_own_wire_format(base_url: str, cohere: FakeServer, vllm: FakeServer) -> None:
    rerank(base_url, model="cohere-rerank", query=QUERY, documents=DOCUMENTS, top_n=3, max_tokens_per_doc=256)
    sent = cohere.requests[-1]
    assert sent.path == "/v2/rerank" and sent.headers["authorization"] == f"Bearer {COHERE_KEY}"
    assert sent.body == {"model": "rerank-v3.5", "query": QUERY, "top_n": 3, "max_tokens_per_doc": 256,
                         "documents": [d if isinstance(d, str) else d["text"] for d in DOCUMENTS]}
    rerank(base_url, model="vllm-rerank", query=QUERY, documents=DOCUMENTS)
    sent = vllm.requests[-1]
    assert sent.path == "/v1/rerank" and sent.headers["authorization"] == f"Bearer {VLLM_KEY}"
    assert sent.body == {"model": "BAAI/bge-reranker-v2-m3", "query": QUERY,
                         "documents": [d if isinstance(d, str) else d["text"] for d in DOCUMENTS]}


def test_a_rate_limited_deployment_fails_over_to_the_next(base_url: str, cohere: FakeServer) -> None:
    before = len(cohere.requests)
    answer = rerank(base_url, model="limited-then-vllm", query=QUERY, documents=DOCUMENTS)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-llm-broker-deployment"] == "vllm/BAAI/bge-reranker-v2-m3"
    assert answer.headers["x-llm-broker-attempts"] == "2" and len(cohere.requests) == before + 1
    assert [r["index"] for r in answer.json()["results"]] == BEST_FIRST


def test_cost_is_per_search_unit_on_the_answer_and_in_the_ledger(base_url: str) -> None:
    many = [f"document number {i} about France" for i in range(150)]  # 150 documents: two search units
    answer = rerank(base_url, model="billed", query=QUERY, documents=many, top_n=1)
    usage = answer.json()["usage"]
    assert usage["search_units"] == 2 and usage["cost"] == pytest.approx(0.004)  # rerank-v3.5: $2 / 1k searches
    assert answer.headers["x-llm-broker-cost-usd"] == "0.004"
    # No usage from vLLM's server for searches: Cohere's definition, estimated, at this deployment's price.
    estimated = rerank(base_url, model="vllm-rerank", query=QUERY, documents=many).json()["usage"]
    assert estimated["search_units"] == 2 and estimated["cost"] == pytest.approx(0.002)
    assert rerank(base_url, model="mock-rerank", query=QUERY, documents=many).json()["usage"]["cost"] == 0
    counted = row_for(until_counted(base_url, "billed", 1), model="billed")
    assert counted["requests"] == 1 and counted["cost_usd"] == pytest.approx(0.004)


@pytest.mark.parametrize(("body", "param", "says"), [
    ({"documents": []}, "documents", "at least one document"),
    ({"documents": ["a", " "]}, "documents", "empty documents"),
    ({"documents": ["a"] * 10_001}, "documents", "length <= 10000"),
    ({"top_n": 0}, "top_n", ">= 1"),
    ({"top_n": "two"}, "top_n", "Expected `int`"),
    ({"query": ""}, "query", "length >= 1"),
    ({"query": None}, "query", "Expected `str`"),
])
def test_bad_requests_are_400s_naming_the_field(base_url: str, body: dict[str, Any], param: str, says: str) -> None:
    answer = rerank(base_url, **{"model": "mock-rerank", "query": QUERY, "documents": ["a", "b"], **body})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and says in error["message"]


def test_a_model_without_rerank_is_a_400_naming_it_and_an_unknown_one_a_404(base_url: str, vllm: FakeServer) -> None:
    before = len(vllm.requests)
    answer = rerank(base_url, model="chat-only", query=QUERY, documents=["a"])
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "unsupported_capability" and "`chat-only`" in error["message"]
    assert "rerank" in error["message"] and error["param"] == "model" and len(vllm.requests) == before
    missing = rerank(base_url, model="no-such-model", query=QUERY, documents=["a"])
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_an_upstream_429_is_a_429_with_its_words(base_url: str) -> None:
    answer = rerank(base_url, model="cohere-limited", query=QUERY, documents=["x"])
    assert answer.status_code == 429
    error = answer.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and "Trial key" in error["message"]


def test_search_units_follow_coheres_definition() -> None:
    from broker.routing.capabilities import estimate_search_units
    from broker.wire.rerank import RerankRequest

    def units(documents: list[str]) -> int:
        return estimate_search_units(RerankRequest(model="m", query="q" * 400, documents=list(documents)))

    assert units(["short"] * 100) == 1 and units(["short"] * 101) == 2  # up to 100 documents a search unit
    # A 100-token query beside a 1,900-token document: 2,000 tokens, four 500-token chunks, four documents.
    assert units(["d" * 7_600] * 25) == 1 and units(["d" * 7_600] * 26) == 2


# ---------------------------------------------------------------- Bedrock's rerankers (InvokeModel)


def test_bedrock_rerankers_get_their_own_bodies_signed_on_invoke(base_url: str, bedrock: FakeServer) -> None:
    documents = [d if isinstance(d, str) else d["text"] for d in DOCUMENTS]
    answer = rerank(base_url, model="bedrock-cohere", query=QUERY, documents=DOCUMENTS, top_n=3, max_tokens_per_doc=256)
    assert answer.status_code == 200, answer.text
    sent = bedrock.requests[-1]
    assert sent.path == "/model/cohere.rerank-v3-5%3A0/invoke"
    assert sent.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/")
    assert sent.body == {"query": QUERY, "documents": documents, "top_n": 3, "max_tokens_per_doc": 256,
                         "api_version": 2}
    # Amazon Rerank has no max_tokens_per_doc (the fake refuses unknown fields, as InvokeModel does): not sent.
    answer = rerank(base_url, model="bedrock-amazon", query=QUERY, documents=DOCUMENTS, top_n=3, max_tokens_per_doc=256)
    assert answer.status_code == 200, answer.text
    assert [r["index"] for r in answer.json()["results"]] == BEST_FIRST[:3]
    sent = bedrock.requests[-1]
    assert sent.path == "/model/amazon.rerank-v1%3A0/invoke"
    assert sent.body == {"query": QUERY, "documents": documents, "top_n": 3}


def test_bedrock_rerank_cost_is_awss_price_per_thousand_queries(base_url: str) -> None:
    many = [f"document number {i} about France" for i in range(150)]  # two queries of up to 100 documents
    cohere = rerank(base_url, model="bedrock-cohere", query=QUERY, documents=many, top_n=1)
    assert cohere.json()["usage"]["search_units"] == 2 and cohere.json()["usage"]["cost"] == pytest.approx(0.004)
    answer = rerank(base_url, model="bedrock-billed", query=QUERY, documents=many, top_n=1)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["cost"] == pytest.approx(0.002) and answer.headers["x-llm-broker-cost-usd"] == "0.002"
    counted = row_for(until_counted(base_url, "bedrock-billed", 1), model="bedrock-billed")
    assert counted["requests"] == 1 and counted["cost_usd"] == pytest.approx(0.002)


def test_a_wrong_aws_secret_is_refused_by_the_signature_check_and_never_shown(base_url: str) -> None:
    answer = rerank(base_url, model="bedrock-misconfigured", query=QUERY, documents=["a"])
    assert answer.status_code == 502, answer.text
    message = answer.json()["error"]["message"]
    assert "InvalidSignatureException" in message and "Canonical String" not in message
    assert "not-the-secret-access-key" not in answer.text


def test_a_throttled_bedrock_reranker_fails_over_to_the_next(base_url: str, bedrock: FakeServer) -> None:
    before = len(bedrock.requests)
    answer = rerank(base_url, model="bedrock-throttled-then-amazon", query=QUERY, documents=DOCUMENTS)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-llm-broker-deployment"] == "bedrock/amazon.rerank-v1:0"
    assert answer.headers["x-llm-broker-attempts"] == "2"
    assert [r.path for r in list(bedrock.requests)[before:]] == ["/model/cohere.rerank-fake-throttled/invoke",
                                                                   "/model/amazon.rerank-v1%3A0/invoke"]
    assert [r["index"] for r in answer.json()["results"]] == BEST_FIRST


def test_a_bedrock_chat_model_marked_as_a_reranker_is_a_400_naming_it(base_url: str, bedrock: FakeServer) -> None:
    before = len(bedrock.requests)
    answer = rerank(base_url, model="bedrock-chat-model", query=QUERY, documents=["a"])
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert "amazon.nova-lite-v1:0" in error["message"] and "not a reranker" in error["message"]
    assert len(bedrock.requests) == before
