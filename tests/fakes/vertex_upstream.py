"""A protocol-faithful fake of Google Vertex AI and of Google's OAuth token endpoint, over real HTTP.

The token endpoint does what oauth2.googleapis.com/token does for a service account
(https://developers.google.com/identity/protocols/oauth2/service-account#authorizingrequests):
it takes `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`, checks the
JWT's RS256 signature against the public half of a key it issued (by `kid`), its `iss`, `aud` (Google's
token URI), `scope`, `iat` and `exp` (at most an hour apart), and answers an access token
with `expires_in`; a refusal is `400 {"error": "invalid_grant", "error_description": ...}`. Keys are
generated per test (`key_file`), so no secret ships in the repository.

The model endpoints take only the tokens it minted, unexpired (else Google's 401 UNAUTHENTICATED),
only for its project and location (else 403 PERMISSION_DENIED / 400), and answer as the publishers do:

    POST /v1/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent
                                                          ...:streamGenerateContent?alt=sse
        Gemini's answers, from gemini_upstream.py (its model names inject its failures)
                                                          ...:predict
        text embeddings: gemini_upstream.py's vectors, at most 250 instances (1 for gemini-embedding-*)
    POST /v1/projects/{p}/locations/{l}/publishers/anthropic/models/{m}:rawPredict | :streamRawPredict
        Claude's, from anthropic_upstream.py, for a body without `model`, with `anthropic_version`
        "vertex-2023-10-16" and `stream` matching the method; URL image sources refused, as Vertex does
    POST /v1/projects/{p}/locations/{l}/publishers/anthropic/models/count-tokens:rawPredict
Vertex's own front answers model `quota-exhausted` (either publisher) with 429 RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import secrets
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes import anthropic_upstream, gemini_upstream
from tests.fakes.anthropic_upstream import error_response
from tests.fakes.gemini_upstream import google_error, read_json
from tests.fakes.server import FakeServer, RecordedRequest

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# The assertion's audience is Google's token endpoint whichever URI it is posted to (google-auth's
# service_account.py sets it so; the key's `token_uri` only says where to post).
AUDIENCE = "https://oauth2.googleapis.com/token"
VERTEX_VERSION = "vertex-2023-10-16"
MAX_ASSERTION_S = 3600  # Google: "Token must be a short-lived token (60 minutes)"
SKEW_S = 300


def _b64url(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _grant_error(description: str, error: str = "invalid_grant") -> Response:
    return JSONResponse({"error": error, "error_description": description}, 400)


class Tokens:
    """What the token endpoint issued: keys it trusts (email → kid → public key) and live tokens."""

    def __init__(self, lifetime_s: int) -> None:
        self.lifetime_s = lifetime_s
        self.keys: dict[str, dict[str, rsa.RSAPublicKey]] = {}
        self.issued: dict[str, float] = {}  # access token → unix expiry

    def grant(self, form: dict[str, str]) -> Response:
        if form.get("grant_type") != JWT_BEARER:
            return _grant_error(f"Invalid grant_type: {form.get('grant_type', '')}", "unsupported_grant_type")
        try:
            head_b64, claims_b64, signature_b64 = form.get("assertion", "").split(".")
            header, claims = json.loads(_b64url(head_b64)), json.loads(_b64url(claims_b64))
            signature = _b64url(signature_b64)
        except ValueError:
            return _grant_error("Invalid JWT: the assertion is not a JWT.")
        if header.get("alg") != "RS256":
            return _grant_error("Invalid JWT: only RS256 is accepted.")
        public = self.keys.get(claims.get("iss", ""), {}).get(header.get("kid", ""))
        if public is None:
            return _grant_error("Invalid grant: account not found")
        try:
            public.verify(signature, f"{head_b64}.{claims_b64}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return _grant_error("Invalid JWT Signature.")
        now = time.time()
        iat, exp = claims.get("iat", 0), claims.get("exp", 0)
        if not (iat - SKEW_S <= now < exp + SKEW_S and 0 < exp - iat <= MAX_ASSERTION_S):
            return _grant_error("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
                                "timeframe. Check your iat and exp values in the JWT claim.")
        if claims.get("aud") != AUDIENCE:
            return _grant_error(f"Invalid JWT: the audience must be {AUDIENCE}.")
        if SCOPE not in str(claims.get("scope", "")).split():
            return _grant_error("Invalid OAuth scope or ID token audience provided.", "invalid_scope")
        token = "ya29.fake-" + secrets.token_urlsafe(32)
        self.issued[token] = now + self.lifetime_s
        return JSONResponse({"access_token": token, "expires_in": self.lifetime_s, "token_type": "Bearer"})

    def refused(self, authorization: str | None) -> Response | None:
        """Google's 401 for a call without a live token of ours; None lets it in."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return google_error(401, "UNAUTHENTICATED", "Request is missing required authentication credential. "
                                "Expected OAuth 2 access token, login cookie or other valid authentication "
                                "credential.", [_reason("CREDENTIALS_MISSING")])
        expiry = self.issued.get(token)
        if expiry is None or time.time() >= expiry:
            return google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected "
                                "OAuth 2 access token, login cookie or other valid authentication credential.",
                                [_reason("ACCESS_TOKEN_EXPIRED" if expiry else "ACCESS_TOKEN_TYPE_UNSUPPORTED")])
        return None


def _reason(reason: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com",
            "metadata": {"service": "aiplatform.googleapis.com", "method": "google.cloud.aiplatform.v1.PredictionService"}}


def _quota() -> Response:
    return google_error(429, "RESOURCE_EXHAUSTED", "Resource exhausted. Please try again later. Please refer to "
                        "https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details.",
                        [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}])


def _claude(model: str, method: str, body: Any) -> Response:
    if not isinstance(body, dict):
        return error_response(400, "invalid_request_error", "Input should be a valid dictionary")
    if body.get("anthropic_version") != VERTEX_VERSION:
        return error_response(400, "invalid_request_error", f"anthropic_version: Input should be '{VERTEX_VERSION}'")
    if model == "count-tokens":
        if method != "rawPredict":
            return google_error(404, "NOT_FOUND", "count-tokens is served by rawPredict.")
        return anthropic_upstream.count({k: v for k, v in body.items() if k != "anthropic_version"})
    if "model" in body:  # the model is the path's (the SDK's Vertex client moves it there)
        return error_response(400, "invalid_request_error", "model: Extra inputs are not permitted")
    if bool(body.get("stream")) != (method == "streamRawPredict"):
        return error_response(400, "invalid_request_error", f"stream: must be true for streamRawPredict only "
                              f"(this is {method})")
    for i, turn in enumerate(body.get("messages") or []):
        for j, block in enumerate(turn.get("content") if isinstance(turn.get("content"), list) else []):
            if block.get("type") == "image" and (block.get("source") or {}).get("type") == "url":
                return error_response(400, "invalid_request_error",
                                      f"messages.{i}.content.{j}.image.source.base64.data: URL sources are not supported")
    claude = {k: v for k, v in body.items() if k != "anthropic_version"}
    return anthropic_upstream.answer({"model": model, **claude})


def _predict(model: str, body: Any) -> Response:
    """Text embeddings (https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/text-embeddings-api),
    vectors from gemini_upstream.embedding, a word a token."""
    if not isinstance(body, dict) or set(body) - {"instances", "parameters"}:
        return google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received. Unknown name at the top level.")
    instances, parameters = body.get("instances"), body.get("parameters") or {}
    most = 1 if model.startswith("gemini-embedding") else 250
    if not isinstance(instances, list) or not 1 <= len(instances) <= most:
        return google_error(400, "INVALID_ARGUMENT", f"The model {model} takes between 1 and {most} instances.")
    if set(parameters) - {"outputDimensionality", "autoTruncate"}:
        return google_error(400, "INVALID_ARGUMENT", f"Unknown parameters: {sorted(parameters)}.")
    dims = parameters.get("outputDimensionality", gemini_upstream.EMBEDDING_DIMENSIONS)
    if not isinstance(dims, int) or not 1 <= dims <= 3072:
        return google_error(400, "INVALID_ARGUMENT", "outputDimensionality is out of range.")
    predictions = []
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict) or not isinstance(instance.get("content"), str) or set(instance) - {
                "content", "task_type", "title"}:
            return google_error(400, "INVALID_ARGUMENT", f"instances[{i}]: a text instance is {{content}}.")
        text = instance["content"]
        predictions.append({"embeddings": {"values": gemini_upstream.embedding(text, dims),
                                           "statistics": {"truncated": False, "token_count": len(text.split())}}})
    return JSONResponse({"predictions": predictions,
                         "metadata": {"billableCharacterCount": sum(len(i["content"]) for i in instances)}})


def create_app(*, project: str, location: str, lifetime_s: int) -> Starlette:
    requests: collections.deque[RecordedRequest] = collections.deque(maxlen=1000)
    tokens = Tokens(lifetime_s)
    counter = iter(range(1, 1 << 30))

    async def token(request: Request) -> Response:
        raw = (await request.body()).decode()
        form = dict(urllib.parse.parse_qsl(raw))
        requests.append(RecordedRequest(request.method, request.url.path, dict(request.headers),
                                        {k: v for k, v in form.items() if k != "assertion"}))
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return _grant_error("Invalid request: the body must be form-encoded.", "invalid_request")
        return tokens.grant(form)

    async def models(request: Request) -> Response:
        body = await read_json(request, requests)
        if refused := tokens.refused(request.headers.get("authorization")):
            return refused
        params = request.path_params
        model, _, method = params["target"].rpartition(":")
        if params["project"] != project:
            return google_error(403, "PERMISSION_DENIED", f"Permission 'aiplatform.endpoints.predict' denied on "
                                f"resource '//aiplatform.googleapis.com/projects/{params['project']}/locations/"
                                f"{params['location']}/publishers/{params['publisher']}/models/{model}' "
                                "(or it may not exist).")
        if params["location"] != location:
            return google_error(400, "INVALID_ARGUMENT", f"Request location {params['location']} does not match "
                                f"the endpoint's location {location}.")
        if model == "quota-exhausted":
            return _quota()
        if params["publisher"] == "anthropic":
            return _claude(model, method, body)
        if params["publisher"] == "google" and method == "predict":
            return _predict(model, body)
        if params["publisher"] == "google":
            return gemini_upstream.answer(model, method, body, alt=request.query_params.get("alt"),
                                          response_id=f"vertexResp{next(counter):04d}")
        return google_error(404, "NOT_FOUND", f"Publisher Model `{params['publisher']}/{model}` not found.")

    app = Starlette(routes=[
        Route("/token", token, methods=["POST"]),
        Route("/v1/projects/{project}/locations/{location}/publishers/{publisher}/models/{target}", models,
              methods=["POST"]),
    ])
    app.state.requests = requests
    app.state.tokens = tokens
    return app


class VertexServer(FakeServer):
    """The fake on a free port. `base_url` is what a `vertex` provider's `base_url` takes (the API root,
    .../v1); `key_file()` writes a service-account key whose `token_uri` is this fake's."""

    def __init__(self, *, project: str, location: str, lifetime_s: int = 3600) -> None:
        super().__init__(app=create_app(project=project, location=location, lifetime_s=lifetime_s))
        self.project = project
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.token_uri = f"http://127.0.0.1:{self.port}/token"
        self._dir = tempfile.TemporaryDirectory(prefix="vertex-keys-")

    @property
    def tokens(self) -> Tokens:
        return self.app.state.tokens  # type: ignore[no-any-return]

    def token_requests(self) -> int:
        return sum(1 for r in self.requests if r.path == "/token")

    def key_file(self, name: str, *, trusted: bool = True, email: str = "broker") -> Path:
        """A new service-account key; `trusted=False`: the same account and key id, another RSA key
        (what a stale or tampered key file looks like to Google)."""
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        client_email = f"{email}@{self.project}.iam.gserviceaccount.com"
        kid = hashlib.sha1(client_email.encode()).hexdigest()  # 40 hex digits, as Google's key ids
        if trusted:
            self.tokens.keys.setdefault(client_email, {})[kid] = private.public_key()
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        info = {"type": "service_account", "project_id": self.project, "private_key_id": kid, "private_key": pem,
                "client_email": client_email, "client_id": "1" * 21, "token_uri": self.token_uri,
                "auth_uri": "https://accounts.google.com/o/oauth2/auth", "universe_domain": "googleapis.com"}
        path = Path(self._dir.name) / f"{name}.json"
        path.write_text(json.dumps(info))
        return path

    def stop(self) -> None:
        super().stop()
        self._dir.cleanup()
