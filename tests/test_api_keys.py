"""Keys made at run time (broker/api_keys.py, api/live_keys.py, api/routes/admin.py, broker/cli/keys.py):
through two real API processes, the `llm-broker keys` CLI and the official openai SDK."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import openai
import pytest
import redis
import yaml

from api.auth import Authenticator
from broker.api_keys import KeyRecord
from broker.config import ConfigError, hash_key, validate
from broker.errors import AuthenticationFailed, PermissionDenied
from broker.keys import Keys
from tests.harness import REDIS_URL, TEST_KEY
from tests.stacks import Stack, StackFactory
from tests.test_cli import cli

ADMIN_KEY = "sk-admin-key-0001"
PROPAGATION_S = 2.0  # the promise: a change reaches every API process within this
ASK: dict[str, Any] = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


class Apis:
    def __init__(self, stack: Stack, urls: list[str]) -> None:
        self.stack, self.urls = stack, urls
        self.config = str(stack.config_path)

    def admin(self, method: str, path: str, *, key: str | None = ADMIN_KEY, api: int = 0, **kw: Any) -> httpx.Response:
        headers = {**kw.pop("headers", {}), **({"authorization": f"Bearer {key}"} if key is not None else {})}
        return httpx.request(method, self.urls[api].removesuffix("/v1") + path, headers=headers, timeout=10, **kw)

    def client(self, key: str, api: int) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.urls[api], api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def apis(module_stack_factory: StackFactory) -> Apis:
    stack = module_stack_factory({"mock": {"kind": "mock", "tokens": 3}}, {"m": [{"provider": "mock", "model": "m"}]},
                                 tenants={"test": {"keys": [hash_key(TEST_KEY)]}, "other": {"keys": []}},
                                 admin={"keys": [hash_key(ADMIN_KEY)]})
    stack.up("mock", apis=(1, 1))
    return Apis(stack, list(stack.base_urls))  # two API processes, each with its own copy of the keys


def within(seconds: float, check: Callable[[], bool]) -> float:
    """How long until `check()` held (polled), failing past `seconds`."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, f"not within {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - start


def works(apis: Apis, key: str, api: int) -> bool:
    try:
        apis.client(key, api).models.list()
        return True
    except openai.AuthenticationError:
        return False


def test_a_key_made_with_the_cli_works_on_every_api_process_within_2s_and_stops_when_revoked(apis: Apis) -> None:
    made = cli("keys", "create", "--config", apis.config, "--tenant", "test", "--name", "cli-life")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("sk-") and len(key) > 40 and "shown only now" in made.stderr and key not in made.stderr
    for api in (0, 1):
        within(PROPAGATION_S, lambda: works(apis, key, api))
    answer = apis.client(key, 1).chat.completions.create(**ASK)
    assert answer.choices[0].message.content

    for listed in (cli("keys", "list", "--config", apis.config), cli("keys", "list", "--config", apis.config, "--json")):
        assert listed.returncode == 0 and "cli-life" in listed.stdout
        assert key not in listed.stdout + listed.stderr and hash_key(key)[7:] not in listed.stdout  # an id: 12 digits

    gone = cli("keys", "revoke", "--config", apis.config, "cli-life")
    assert gone.returncode == 0 and "revoked key 'cli-life'" in gone.stdout
    for api in (0, 1):
        within(PROPAGATION_S, lambda: not works(apis, key, api))
    with pytest.raises(openai.AuthenticationError) as info:
        apis.client(key, 0).chat.completions.create(**ASK)
    assert info.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    assert cli("keys", "revoke", "--config", apis.config, "cli-life").returncode == 2  # gone already
    for proc in apis.stack.procs:  # the key never reached a log
        assert key not in proc.output()


def test_a_key_made_over_the_admin_api_works_on_both_processes_and_is_revoked_by_its_id(apis: Apis) -> None:
    made = apis.admin("POST", "/admin/keys", json={"tenant": "other", "name": "http-life"}, api=1)
    assert made.status_code == 201, made.text
    body = made.json()
    key = body["key"]
    assert body["object"] == "api_key" and body["tenant"] == "other" and body["source"] == "redis"
    assert apis.client(key, 1).models.list()  # the process that answered knows it already
    within(PROPAGATION_S, lambda: works(apis, key, 0))

    listed = apis.admin("GET", "/admin/keys?tenant=other")
    assert listed.status_code == 200 and key not in listed.text
    assert [k["name"] for k in listed.json()["data"]] == ["http-life"]
    assert "key" not in listed.json()["data"][0]

    gone = apis.admin("DELETE", f"/admin/keys/{body['id'][:8]}", api=0)  # an id prefix: on the other process
    assert gone.json() == {"id": body["id"], "name": "http-life", "tenant": "other", "object": "api_key.deleted",
                           "deleted": True}
    for api in (0, 1):
        within(PROPAGATION_S, lambda: not works(apis, key, api))


def test_a_redis_keys_own_limits_apply_like_a_config_keys(apis: Apis) -> None:
    made = apis.admin("POST", "/admin/keys", json={"tenant": "test", "name": "one-rpm", "rpm": 1, "tpm": 100_000})
    key = made.json()["key"]
    within(PROPAGATION_S, lambda: works(apis, key, 1))
    first = apis.client(key, 1).chat.completions.with_raw_response.create(**ASK)
    assert first.headers["x-ratelimit-limit-requests"] == "1"
    with pytest.raises(openai.RateLimitError) as info:  # on the other process too: the buckets are in Redis
        apis.client(key, 0).chat.completions.create(**ASK)
    assert "requests per min (RPM) of key 'one-rpm': Limit 1" in info.value.message
    apis.client(TEST_KEY, 0).chat.completions.create(**ASK)  # its tenant's other key is not held to it
    apis.admin("DELETE", "/admin/keys/one-rpm")


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("key, status, code", [(None, 401, "invalid_api_key"), ("sk-wrong-admin-key", 401,
                                               "invalid_api_key"), (TEST_KEY, 403, "permission_denied")])
def test_the_admin_api_refuses_anything_but_the_admin_key(apis: Apis, key: str | None, status: int, code: str) -> None:
    for method, path, kw in (("GET", "/admin/keys", {}), ("DELETE", "/admin/keys/whatever", {}),
                             ("POST", "/admin/keys", {"json": {"tenant": "test"}})):
        answer = apis.admin(method, path, key=key, **kw)
        assert answer.status_code == status and error_of(answer)["code"] == code
    assert "sk-wrong-admin-key" not in apis.admin("GET", "/admin/keys", key="sk-wrong-admin-key").text


def test_with_no_admin_key_configured_nothing_admin_is_reachable() -> None:
    config = validate({"tenants": {"t": {"keys": [hash_key(ADMIN_KEY)]}}}, source="test")
    with pytest.raises(PermissionDenied, match="admin API is off"):
        Authenticator(config).admin(f"Bearer {ADMIN_KEY}")
    admin = validate({"admin": {"keys": [hash_key(ADMIN_KEY)]}}, source="test")
    Authenticator(admin).admin(f"Bearer {ADMIN_KEY}")
    with pytest.raises(AuthenticationFailed):  # the admin key is no tenant's key
        Authenticator(admin).authenticate(f"Bearer {ADMIN_KEY}")


@pytest.mark.parametrize("body, status, param", [
    (b"", 400, None),
    (b"{not json", 400, None),
    (b"[]", 400, None),
    (json.dumps({"name": "x"}).encode(), 400, "tenant"),
    (json.dumps({"tenant": "nope"}).encode(), 400, "tenant"),
    (json.dumps({"tenant": "test", "rpm": 0}).encode(), 400, "rpm"),
    (json.dumps({"tenant": "test", "rpm": "10"}).encode(), 400, "rpm"),
    (json.dumps({"tenant": "test", "rmp": 10}).encode(), 400, None),  # a typo is no unlimited key
    (json.dumps({"tenant": "test", "name": "has space"}).encode(), 400, "name"),
    (json.dumps({"tenant": "test", "daily_budget_usd": -1}).encode(), 400, "daily_budget_usd"),
    (json.dumps({"tenant": "test", "rpm": 10**30}).encode(), 400, "rpm"),
])
def test_bad_input_to_the_admin_api_gets_openai_shaped_4xx(apis: Apis, body: bytes, status: int,
                                                          param: str | None) -> None:
    answer = apis.admin("POST", "/admin/keys", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status, answer.text
    error = error_of(answer)
    assert error["type"] == "invalid_request_error" and (param is None or error["param"] == param), error


def test_taken_names_unknown_keys_and_config_keys_get_4xx(apis: Apis) -> None:
    made = apis.admin("POST", "/admin/keys", json={"tenant": "test", "name": "taken"})
    assert made.status_code == 201
    again = apis.admin("POST", "/admin/keys", json={"tenant": "other", "name": "taken"})
    assert again.status_code == 409 and error_of(again)["code"] == "key_name_taken"
    config_key_name = hash_key(TEST_KEY)[7:19]  # a bare config key is named after its hash
    for ref, status, code in (("nobody", 404, "key_not_found"), (config_key_name, 409, "key_in_config"),
                              ("%20", 404, "key_not_found")):
        answer = apis.admin("DELETE", f"/admin/keys/{ref}")
        assert answer.status_code == status and error_of(answer)["code"] == code
    assert error_of(apis.admin("GET", "/admin/keys?tenant=nope"))["param"] == "tenant"
    assert apis.admin("DELETE", "/admin/keys/taken").status_code == 200


def test_a_change_whose_message_was_lost_is_still_picked_up_within_2s(apis: Apis) -> None:
    # Written behind the API's back, with no message published: only the periodic version check sees it.
    keys = Keys(yaml.safe_load(open(apis.config))["namespace"])
    key = "sk-written-without-a-message-0001"
    digest = hash_key(key)[7:]
    record = msgspec.msgpack.encode(KeyRecord(name="silent", tenant="test", created_at=int(time.time())))
    client = redis.Redis.from_url(REDIS_URL)
    client.hset(keys.api_keys(), digest, record)
    client.hset(keys.api_key_names(), "silent", digest)
    client.incr(keys.api_keys_version())
    for api in (0, 1):
        within(PROPAGATION_S, lambda: works(apis, key, api))
    client.hdel(keys.api_keys(), digest)
    client.hdel(keys.api_key_names(), "silent")
    client.incr(keys.api_keys_version())
    for api in (0, 1):
        within(PROPAGATION_S, lambda: not works(apis, key, api))
    client.close()


@pytest.mark.parametrize("admin, problem", [
    ({"keys": []}, "Expected `array` of length >= 1 - at `$.admin.keys`"),
    ({"keys": [ADMIN_KEY]}, "at `$.admin.keys[0]`"),  # in clear: refused, as tenant keys are
    ({"keys": [hash_key(TEST_KEY)]}, "the admin key must not be a tenant's key too - at `$.admin.keys[0]`"),
    ({"key": [hash_key(ADMIN_KEY)]}, "unknown field `key`"),
])
def test_the_admin_section_refuses_keys_in_clear_and_tenant_keys(admin: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate({"tenants": {"t": {"keys": [hash_key(TEST_KEY)]}}, "admin": admin}, source="c.yaml")
    assert problem in str(info.value)
