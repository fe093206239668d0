"""The one way the broker opens Redis: a client that speaks RESP2 whatever the library's default.

redis-py 8 switched its default to RESP3. The broker's scripts, replies and tests are built on
RESP2's reply shapes, and the embedded fakeredis of `llm-broker dev` serves RESP3 pub/sub so
slowly that a burst of 50 requests took 80 s (0.3 s on RESP2). RESP3 buys us nothing: no client
tracking, no push notifications beyond pub/sub, which RESP2 carries as well.

`redis+cluster://host:port[,host:port...]` (or `rediss+cluster://`) opens a Redis Cluster client:
every key one script touches shares a hash tag (broker/keys.py), pipelines are sent per node, and
the client is typed as a plain `Redis` because the broker uses only commands both share.
Subscriptions need a connection to one node (`subscriber`): a PUBLISH on any node of a cluster
reaches the subscribers of every node. `redis+sentinel://` opens the primary its sentinels name
(broker/store/sentinel.py).
"""

from __future__ import annotations

import random
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from broker.store.packing import packed_by_hiredis
from broker.store.pool import QuickCheckoutPool
from broker.store.sentinel import connect_sentinel

PROTOCOL = 2
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
# A cluster client has no blocking pool: past its cap per node a command fails at once, so the cap
# is this many times what a single-Redis pool would wait for (still a bound on connections).
CLUSTER_POOL_FACTOR = 4


def connect(url: str, *, max_connections: int | None = None, **options: Any) -> Redis:
    """A client for `url`; with `max_connections`, callers wait for a pooled connection (up to
    `timeout` s) rather than opening more (broker/store/pool.py: redis-py's blocking pool, whose
    checkout of a free connection costs nothing)."""
    if is_cluster(url):
        return _cluster(url, max_connections, options)
    if url.startswith("redis+sentinel://"):
        client: Redis = connect_sentinel(url, protocol=PROTOCOL, max_connections=max_connections, **options)
    elif max_connections is None:
        client = Redis.from_url(url, protocol=PROTOCOL, **options)
    else:
        client = Redis(connection_pool=QuickCheckoutPool.from_url(url, max_connections=max_connections,
                                                                  protocol=PROTOCOL, **options))
    # Commands packed in C (broker/store/packing.py), whatever the pool; before its first connection.
    pool = client.connection_pool
    pool.connection_class = packed_by_hiredis(pool.connection_class)
    return client


def is_cluster(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The startup nodes a cluster URL names, or a ValueError that says what is wrong with it."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    nodes, parts = [], netloc.split(",")
    for i, part in enumerate(parts, 1):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():  # the text is not echoed: it may hold a misplaced password
            raise ValueError(f"a Redis Cluster URL names its nodes as host:port[,host:port...]; node {i} of "
                             f"{len(parts)} is not host:port")
        nodes.append((host.strip("[]"), int(port)))
    return nodes


def _cluster(url: str, max_connections: int | None, options: dict[str, Any]) -> Redis:
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    username, _, password = credentials.partition(":") if credentials else ("", "", "")
    options.pop("timeout", None)  # a BlockingConnectionPool's wait; the cluster client has none
    for name, value in parse_qsl(parts.query):
        options.setdefault(name, float(value) if name.endswith("timeout") else value)
    if max_connections is not None:
        options["max_connections"] = max_connections * CLUSTER_POOL_FACTOR
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_nodes(url)],
        username=unquote(username) or None, password=unquote(password) or None,
        ssl=parts.scheme.lower().startswith("rediss"), protocol=PROTOCOL, **options,
    )
    return cast(Redis, client)


def subscriber(redis: Redis) -> Redis:
    """A client to SUBSCRIBE with: `redis` itself, or for a cluster a client of one of its primaries,
    chosen again at each call (so a resubscription after a node failed finds a live one)."""
    if not isinstance(redis, RedisCluster):
        return redis
    cluster = cast(RedisCluster, redis)
    # Before its first command the client knows only the nodes its URL named.
    node = random.choice(cluster.get_primaries() or list(cluster.nodes_manager.startup_nodes.values()))
    # The node's own connection settings (address, credentials, TLS, RESP2), in a pool of its own.
    return Redis(connection_pool=ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs))


async def get_many(redis: Redis, keys: list[str]) -> list[bytes | None]:
    """GET of each key, in one round trip: MGET on one Redis; per node (in parallel) on a cluster,
    whose MGET takes keys of one slot only."""
    if isinstance(redis, RedisCluster):
        return cast(list[bytes | None], await cast(RedisCluster, redis).mget_nonatomic(keys))
    return cast(list[bytes | None], await redis.mget(keys))


def without_password(url: str) -> str:
    """`url` fit for a log line or a banner: any password in it replaced by `***`."""
    parts = urlsplit(url)
    credentials, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{hosts}").geturl()
