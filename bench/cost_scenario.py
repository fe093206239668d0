"""The seed's savings scenario, replayed through the real API, router and workers.

    python -m bench.cost_scenario                       # 1000 conversations per tenant, 70% routine
    python -m bench.cost_scenario --conversations 2000 --routine-pct 60

Two mock providers priced like real models (`premium` as gpt-4o, $2.50 / $10 per million input /
output tokens; `economy` as gpt-4o-mini, $0.15 / $0.60). Each conversation is one request of
about 2,000 tokens: a ~1,600-word prompt and a 400-word answer (the mock counts a word as a token).
Complex ones carry tools; routine ones do not.

- Tenant `baseline` sends everything to `all-premium` (one premium deployment).
- Tenant `routed` sends the same requests to `assistant`, whose rule sends requests without tools
  to the economy model (README, "rules").

It prints the monthly cost of both, scaled to 100,000 conversations a month, the saving, and
each tenant's spend read back from GET /v1/usage beside the sum of the costs its answers carried
(`usage.cost`): they must agree to the cent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.procs import drop_namespace, start, stop, wait_ready
from broker.cli.embedded_redis import free_port
from broker.config import hash_key

MONTHLY_CONVERSATIONS = 100_000
KEYS = {"baseline": "sk-bench-baseline", "routed": "sk-bench-routed"}
TOOL = {"type": "function", "function": {"name": "search_orders", "description": "Look up a customer's orders",
                                         "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}}
WORDS = "order refund shipping invoice account password delivery warranty return exchange".split()


def config(redis_url: str, namespace: str) -> str:
    premium = "{provider: premium, model: gpt-4o, input_per_mtok: 2.50, output_per_mtok: 10.00}"
    economy = "{provider: economy, model: gpt-4o-mini, input_per_mtok: 0.15, output_per_mtok: 0.60}"
    return (f"redis_url: {redis_url}\nnamespace: {namespace}\n"
            "providers:\n  premium: {kind: mock, tokens: 400}\n  economy: {kind: mock, tokens: 400}\n"
            f"models:\n  all-premium: [{premium}]\n  economy: [{economy}]\n"
            f"  assistant: {{deployments: [{premium}], rules: [{{use: economy, tools: false}}]}}\n"
            "tenants:\n"
            f"  baseline: {{keys: ['{hash_key(KEYS['baseline'])}'], models: [all-premium]}}\n"
            f"  routed: {{keys: ['{hash_key(KEYS['routed'])}'], models: [assistant]}}\n")


def conversations(n: int, routine_pct: float, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    bodies = []
    for i in range(n):
        prompt = f"conversation {i}: " + " ".join(rng.choice(WORDS) for _ in range(1600))
        body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 400}
        if rng.random() * 100 >= routine_pct:
            body["tools"] = [TOOL]
        bodies.append(body)
    return bodies


async def replay(base_url: str, key: str, model: str, bodies: list[dict[str, Any]], concurrency: int) -> list[float]:
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, headers={"authorization": f"Bearer {key}"}, timeout=120) as client:
        async def one(body: dict[str, Any]) -> float:
            async with gate:
                answer = await client.post("/chat/completions", json={**body, "model": model})
                answer.raise_for_status()
                return float(answer.json()["usage"]["cost"])
        return list(await asyncio.gather(*(one(b) for b in bodies)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=1000, help="per tenant (scaled up in the report)")
    parser.add_argument("--routine-pct", type=float, default=70.0, help="share of routine (tool-less) queries")
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    opts = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="llm-broker-cost-"))
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    (tmp / "broker.yaml").write_text(config(redis_url, namespace))
    api_port = free_port()
    path = str(tmp / "broker.yaml")
    procs: list[subprocess.Popen[bytes]] = []
    r = redis.Redis.from_url(redis_url)
    bodies = conversations(opts.conversations, opts.routine_pct)
    try:
        procs += [start([sys.executable, "-m", "broker.cli", "worker", "--config", path, "--provider", p,
                         "--log-level", "error"], tmp / f"worker-{p}.log") for p in ("premium", "economy")]
        procs.append(start([sys.executable, "-m", "broker.cli", "api", "--config", path, "--host", "127.0.0.1",
                            "--port", str(api_port), "--log-level", "warning"], tmp / "api.log"))
        base_url = f"http://127.0.0.1:{api_port}/v1"
        wait_ready(f"{base_url}/models", procs[-1], 60, {"authorization": f"Bearer {KEYS['baseline']}"})
        answered: dict[str, list[float]] = {}
        ledger: dict[str, int] = {}  # nano-dollars
        for tenant, model in (("baseline", "all-premium"), ("routed", "assistant")):
            answered[tenant] = asyncio.run(replay(base_url, KEYS[tenant], model, bodies, opts.concurrency))
            for _ in range(50):  # the ledger is written with each job's end, just after its answer
                report = httpx.get(f"{base_url}/usage", headers={"authorization": f"Bearer {KEYS[tenant]}"}).json()
                if report["total"]["requests"] >= len(bodies):
                    break
                asyncio.run(asyncio.sleep(0.1))
            ledger[tenant] = report["total"]["cost_nanos"]
    finally:
        for proc in procs:
            stop(proc)
        drop_namespace(r, namespace)

    scale = MONTHLY_CONVERSATIONS / opts.conversations
    base, routed = sum(answered["baseline"]) * scale, sum(answered["routed"]) * scale
    print(f"\n{opts.conversations} conversations per tenant of ~2,000 tokens, {opts.routine_pct:g}% routine; "
          f"scaled to {MONTHLY_CONVERSATIONS:,} a month")
    print(f"  everything on the premium model   ${base:>12,.2f} / month")
    print(f"  routed by the rules               ${routed:>12,.2f} / month")
    print(f"  saving                             {100 * (1 - routed / base):11.1f} %")
    for tenant in ("baseline", "routed"):
        # Each answer's usage.cost is a whole number of nano-dollars, as the ledger adds them up.
        total = sum(round(cost * 1e9) for cost in answered[tenant])
        agree = "agree exactly" if total == ledger[tenant] else f"DISAGREE by {abs(total - ledger[tenant])} nano-$"
        print(f"  tenant {tenant:<9} /v1/usage ${ledger[tenant] / 1e9:,.9f}  sum of usage.cost ${total / 1e9:,.9f}  "
              f"({agree})")


if __name__ == "__main__":
    main()
