"""The fake's `encrypted_content`: an opaque string only this fake can vouch for.

OpenAI hands reasoning back encrypted (`include: ["reasoning.encrypted_content"]`) so that a
client running with `store: false` can replay it, and refuses any blob it cannot decrypt:
`invalid_encrypted_content`, "The encrypted content … could not be verified." (openai/codex#8126,
#8145). A gateway that re-encodes, trims or swaps these strings breaks reasoning models; signing
them here (HMAC-SHA256, key and item id inside the blob) makes that a 400 in tests as it is upstream.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

import msgspec

_KEY = b"llm-broker tests: the fake Responses upstream's own reasoning key"
_MAC_BYTES = 32


class _Sealed(msgspec.Struct):
    id: str
    thought: str


def seal(item_id: str, thought: str) -> str:
    payload = msgspec.json.encode(_Sealed(item_id, thought))
    mac = hmac.new(_KEY, payload, hashlib.sha256).digest()
    return base64.b64encode(mac + payload).decode()


def opened(blob: object) -> str | None:
    """The reasoning item id sealed in `blob`, or None if this fake did not seal it byte for byte."""
    if not isinstance(blob, str):
        return None
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return None
    # Non-canonical base64 (e.g. other trailing bits) decodes to the same bytes: a replay must be identical.
    if len(raw) <= _MAC_BYTES or base64.b64encode(raw).decode() != blob:
        return None
    mac, payload = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
    if not hmac.compare_digest(mac, hmac.new(_KEY, payload, hashlib.sha256).digest()):
        return None
    try:
        return msgspec.json.decode(payload, type=_Sealed).id
    except msgspec.DecodeError:
        return None
