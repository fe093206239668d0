"""The HTTP/1.1 protocol uvicorn runs the API with: httptools', answering a request it cannot parse
(a NUL or bare CR in a header, a non-ASCII header name, a garbled request line) in the OpenAI
error shape instead of uvicorn's plain-text "Invalid HTTP request received.".

The parser has given up on the connection by then: the answer is written
straight to the transport and the connection closed, as uvicorn does.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api import request_ids
from broker.errors import InvalidRequest
from broker.wire import json_encoder

_BODY = json_encoder.encode(InvalidRequest(
    "The request is not valid HTTP/1.1 (for example a control character in a header, or a header name that "
    "is not ASCII), so it could not be read.", code="invalid_http_request").to_body())


class OpenAIErrorsHTTPProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        content = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        # Every error carries a request id, this one too (api/request_ids.py).
        content.extend([b"x-request-id: " + request_ids.new().encode("ascii") + b"\r\n",
                        b"content-type: application/json\r\n",
                        b"content-length: " + str(len(_BODY)).encode("ascii") + b"\r\n",
                        b"connection: close\r\n\r\n", _BODY])
        self.transport.write(b"".join(content))
        self.transport.close()
