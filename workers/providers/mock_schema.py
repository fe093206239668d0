"""Tool-call arguments and structured outputs for the mock: a value valid against a JSON Schema
(a tool's `parameters`, a `response_format`'s `json_schema.schema`), the same for the same seed.

People test their tool-calling and structured-output code against `llm-broker dev`
(OpenAI's SDK parses the latter into their Pydantic model), so the values must
pass the validation their code does: enums and consts, every JSON type,
nested objects and arrays, required fields, numeric and length bounds,
anyOf / oneOf / allOf, and `$ref` into `$defs`. Where there is a choice (which
enum member, which word, which number) a hash chain over the seed decides, so a
prompt always gets the same call. `pattern` is not honoured: generating a string
for an arbitrary regex is a project of its own.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

# Past this depth a recursive schema ($ref to itself) gets only what it requires.
MAX_DEPTH = 6
_FORMATS = {"date-time": "2024-01-01T12:00:00Z", "date": "2024-01-01", "time": "12:00:00Z",
            "email": "user@example.com", "uri": "https://example.com/", "url": "https://example.com/",
            "uuid": "00000000-0000-4000-8000-000000000000", "ipv4": "192.0.2.1", "ipv6": "2001:db8::1",
            "hostname": "example.com"}


class _Draws:
    """Deterministic choices: bytes from a blake2b chain over the seed."""

    def __init__(self, seed: str, vocabulary: Sequence[str]) -> None:
        self._digest = hashlib.blake2b(seed.encode(), digest_size=32).digest()
        self._position = 0
        self.vocabulary = vocabulary

    def byte(self) -> int:
        if self._position == len(self._digest):
            self._digest = hashlib.blake2b(self._digest, digest_size=32).digest()
            self._position = 0
        self._position += 1
        return self._digest[self._position - 1]

    def pick(self, options: Sequence[Any]) -> Any:
        return options[self.byte() % len(options)]

    def word(self) -> str:
        return str(self.pick(self.vocabulary))


def sample(schema: Any, seed: str, vocabulary: Sequence[str]) -> Any:
    """A value valid against `schema` (absent means an empty object, as for a tool without `parameters`)."""
    if not isinstance(schema, dict) or not schema:
        return {}
    return _Sampler(schema, _Draws(seed, vocabulary)).value(schema, 0)


class _Sampler:
    def __init__(self, root: dict[str, Any], draws: _Draws) -> None:
        self.root = root
        self.draws = draws

    def resolve(self, schema: Any) -> Any:
        seen = 0
        while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < 32:
            target: Any = self.root
            for part in schema["$ref"].removeprefix("#").strip("/").split("/"):
                if not part:
                    continue
                part = part.replace("~1", "/").replace("~0", "~")
                target = target.get(part, {}) if isinstance(target, dict) else {}
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **siblings} if isinstance(target, dict) else target
            seen += 1
        if isinstance(schema, dict) and "$ref" in schema:
            # A reference that only leads back to itself (`"$ref": ""` or "#", the root that holds it):
            # what it adds is already here, and kept, it would be followed again at every merge.
            schema = {k: v for k, v in schema.items() if k != "$ref"}
        return schema

    def value(self, schema: Any, depth: int) -> Any:
        schema = self.resolve(schema)
        if schema is True or not isinstance(schema, dict):
            return self.draws.word()
        if "allOf" in schema:
            schema = self.merged(schema)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self.draws.pick(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                # The first branch that is not just null (null once deep: a strict schema makes every
                # field required, an optional one nullable, so a recursive model ends only there). For
                # oneOf that assumes the branches do not overlap (`integer` beside `number` would).
                nulls = [b for b in schema[key] if self.resolve(b) == {"type": "null"}]
                others = [b for b in schema[key] if b not in nulls]
                branches = nulls if nulls and (depth >= MAX_DEPTH or not others) else others
                rest = {k: v for k, v in schema.items() if k != key}
                return self.value({**rest, **self.resolve(branches[0])} if rest else branches[0], depth)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = "null" if "null" in kind and depth >= MAX_DEPTH else next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        match kind:
            case "object":
                return self.object(schema, depth)
            case "array":
                return self.array(schema, depth)
            case "integer":
                return self.integer(schema)
            case "number":
                return self.number(schema)
            case "boolean":
                return self.draws.byte() % 2 == 0
            case "null":
                return None
            case _:
                return self.string(schema)

    def merged(self, schema: dict[str, Any]) -> dict[str, Any]:
        """allOf folded into one schema: properties merged, required joined; of other keywords, the first wins."""
        result = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            part = self.resolve(part)
            if "allOf" in part:
                part = self.merged(part)
            for key, val in part.items():
                if key == "properties":
                    result["properties"] = {**result.get("properties", {}), **val}
                elif key == "required":
                    result["required"] = sorted({*result.get("required", []), *val})
                else:
                    result.setdefault(key, val)
        return result

    def object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties: dict[str, Any] = schema["properties"] if isinstance(schema.get("properties"), dict) else {}
        required = [k for k in schema.get("required", []) if isinstance(k, str)]
        # Every declared property while shallow (the call exercises the whole schema), only the
        # required ones once deep, so a recursive schema ends.
        names = list(properties) if depth < MAX_DEPTH else [k for k in properties if k in required]
        names += [k for k in required if k not in names]
        extra = schema.get("additionalProperties", True)
        result = {}
        for name in names:
            result[name] = self.value(properties.get(name, extra if isinstance(extra, dict) else True), depth + 1)
        while len(result) < schema.get("minProperties", 0) and extra is not False:
            result[f"{self.draws.word()}_{len(result)}"] = self.value(extra, depth + 1)
        return result

    def array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        prefix = schema.get("prefixItems") or (schema["items"] if isinstance(schema.get("items"), list) else [])
        items = schema.get("items") if isinstance(schema.get("items"), dict) else True
        low = max(schema.get("minItems", 0), len(prefix) if depth < MAX_DEPTH else 0)
        count = max(low, 1 if depth < MAX_DEPTH else 0)
        if schema.get("items") is False:  # nothing past the prefix
            count = min(count, len(prefix))
        if "maxItems" in schema:
            count = min(count, schema["maxItems"])
        result: list[Any] = []
        for i in range(count):
            item_schema = prefix[i] if i < len(prefix) else items
            value = self.value(item_schema, depth + 1)
            for _ in range(16):  # uniqueItems: draw again (an enum or a boolean has few values)
                if not schema.get("uniqueItems") or value not in result:
                    break
                value = self.value(item_schema, depth + 1)
            result.append(value)
        return result

    def bounds(self, schema: dict[str, Any], step: float) -> tuple[float, float]:
        low, high = schema.get("minimum"), schema.get("maximum")
        if isinstance(schema.get("exclusiveMinimum"), int | float):
            low = max(low if low is not None else -math.inf, schema["exclusiveMinimum"] + step)
        if isinstance(schema.get("exclusiveMaximum"), int | float):
            high = min(high if high is not None else math.inf, schema["exclusiveMaximum"] - step)
        if low is None:
            low = min(0, high - 100) if high is not None else 0
        if high is None:
            high = low + 100
        return low, high

    def integer(self, schema: dict[str, Any]) -> int:
        low, high = self.bounds(schema, 1)
        low, high = math.ceil(low), math.floor(high)
        step = schema.get("multipleOf")
        if isinstance(step, int) and step > 0:
            first = -(-low // step) * step
            return first + step * (self.draws.byte() % max((high - first) // step + 1, 1))
        return low + self.draws.byte() % max(high - low + 1, 1)

    def number(self, schema: dict[str, Any]) -> float | int:
        step = schema.get("multipleOf")
        low, high = self.bounds(schema, step if isinstance(step, int | float) and step > 0 else 0.01)
        if isinstance(step, int | float) and step > 0:
            return math.ceil(low / step) * step
        # A fraction of the range that is never whole, so the value is not also an "integer".
        value = low + (high - low) * (self.draws.byte() + 0.5) / 256
        return value if value != int(value) else value + min(0.5, (high - value) / 2)

    def string(self, schema: dict[str, Any]) -> str:
        if schema.get("format") in _FORMATS:
            return _FORMATS[schema["format"]]
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        text = self.draws.word()
        while len(text) < low:
            text += " " + self.draws.word()
        return text[:high] if high is not None else text
