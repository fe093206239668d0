"""Broker vs. the upstream alone vs. LiteLLM proxy, same fake upstream, same load.

    python -m bench.compare                      # broker + direct (+ LiteLLM if installed), chat, /v1/messages
                                                 # and /v1/responses
    python -m bench.compare --litellm-workers 1 2 --requests 5000
    python -m bench.compare --no-messages --no-responses   # chat only
    python -m bench.compare --no-burst --no-memory         # goals table without the held-stream phases

Starts the fake OpenAI upstream (tests/fakes/openai_upstream.py) in its own
process, then `llm-broker api` + `llm-broker worker` processes on a redis-server of its own (a free port,
nothing persisted, so INFO commandstats and Redis's CPU count the broker alone; $REDIS_URL uses
that Redis instead, and those figures read "n/a (shared Redis)"), and, when a LiteLLM proxy is installed
(`--litellm-bin` or $LITELLM_BIN, default /opt/litellm-venv/bin/litellm; install it in its own
venv: `python3 -m venv /opt/litellm-venv && /opt/litellm-venv/bin/pip install
'litellm[proxy]'`), the proxy with no database in front of the same upstream.
Every target gets the same requests from bench/loadgen.py; the table shows
throughput, latency, TTFT, the latency the broker adds over the direct call,
and the broker/LiteLLM ratio. Redis memory before/after shows nothing is left.

The /v1/messages case (Anthropic's Messages API inbound; off with --no-messages) adds the fake
Anthropic upstream (tests/fakes/anthropic_upstream.py, its own process too) and measures
  - relayed: the broker's /v1/messages to an Anthropic deployment (the body goes up as received),
    against the Anthropic fake alone;
  - translated: the broker's /v1/messages for the OpenAI fake's model (Messages -> Chat
    Completions -> Messages in the worker), against the OpenAI fake alone and the broker's own chat.
Both fakes stream the same number of content chunks (--chunks): Chat's `data:` deltas, Anthropic's
`content_block_delta` events (https://docs.anthropic.com/en/docs/build-with-claude/streaming),
whose first is the TTFT there.

The /v1/responses case (OpenAI's Responses API inbound; off with --no-responses) sends the broker's
/v1/responses for the OpenAI fake's model (Responses -> Chat Completions -> a Response or its event
stream in the worker; the response stored, as `store` defaults to true), against the OpenAI fake alone
and the broker's own chat, the same requests as chat completions, measured beside it (chat, responses,
responses, chat: `paired`). A chunk there is a
`response.output_text.delta` event, whose first is the TTFT
(https://platform.openai.com/docs/api-reference/responses-streaming). The summary prints what a
Responses request costs relative to a chat one (throughput and p50 ratios); the target is at most 1.10.

Issue 22's goals (bench/goals.py; off with --no-goals, --no-burst, --no-memory) end the summary as a
table with PASS/FAIL: added latency and TTFT at c=1, added p99 of an open loop at half the c=64
rate (bench/openloop.py), CPU (bench/probes.py) and Redis commands per request, throughput as a
share of direct, a burst of streams on slow fakes (bench/held.py) and memory per held-open stream.
Before it, a per-hop timeline of one request at c=1 (bench/timeline.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgspec
import redis

from bench.goals import measure_latency, render, rows
from bench.held import SlowProvider, held_memory
from bench.held import burst as run_burst
from bench.loadgen import Api, LoadStats, run_load
from bench.probes import Probe
from bench.procs import drop_namespace, start, stop, wait_ready
from bench.timeline import timeline
from broker.cli.embedded_redis import free_port, start_embedded_redis
from broker.config import hash_key

BROKER_KEY = "sk-bench-broker"
LITELLM_KEY = "sk-bench"
ANTHROPIC_KEY = "sk-ant-bench-upstream"
CLAUDE_MODEL = "claude-sonnet-4-20250514"  # what the Anthropic fake is asked for, by the broker or directly


def measure(name: str, base_url: str, key: str, model: str, opts: argparse.Namespace,
            api: Api = "chat", probe: Probe | None = None) -> dict[str, LoadStats]:
    """Warm-up, then the measured run, non-stream and stream; `probe` records each run's cost."""
    results = {}
    for mode, stream, total in (("non-stream", False, opts.requests), ("stream", True, opts.stream_requests)):
        asyncio.run(run_load(base_url, key, model, concurrency=opts.concurrency, total=opts.warmup, stream=stream,
                             api=api))
        before = probe.snap() if probe is not None else None
        stats = asyncio.run(run_load(base_url, key, model, concurrency=opts.concurrency, total=total, stream=stream,
                                     api=api))
        if probe is not None and before is not None:
            probe.record(f"c={opts.concurrency} {mode}", before, stats.requests)
        print(f"  {name:<30} {mode:<10} {stats.summary()}", flush=True)
        results[mode] = stats
    return results


def added(b: LoadStats, d: LoadStats) -> str:
    return f"p50 {b.latency_p50_ms - d.latency_p50_ms:+.1f} ms, p99 {b.latency_p99_ms - d.latency_p99_ms:+.1f} ms"


def ttft(b: LoadStats, d: LoadStats, what: str) -> str:
    return f"; TTFT p50 {b.ttft_p50_ms:.1f} ms ({what} {d.ttft_p50_ms:.1f}), p99 {b.ttft_p99_ms:.1f} ms"


RESPONSES_TARGET = 1.10  # the Responses path may cost at most 10% more than chat


def paired(broker_url: str, opts: argparse.Namespace) -> tuple[dict[str, LoadStats], dict[str, LoadStats]]:
    """Responses and chat through the same broker, measured beside each other in the order chat,
    responses, responses, chat, and averaged: a drift over the run (Redis filling with stored responses
    and results, a neighbour's load) weighs on both alike, which one chat figure from minutes before did
    not. Returns (responses, chat), each the means of its two runs."""
    runs: dict[str, list[dict[str, LoadStats]]] = {"chat": [], "responses": []}
    for api in ("chat", "responses", "responses", "chat"):
        runs[api].append(measure(f"{api}: broker, paired", broker_url, BROKER_KEY, "fake-model", opts,
                                 api="responses" if api == "responses" else "chat"))

    def mean(of: list[dict[str, LoadStats]]) -> dict[str, LoadStats]:
        return {mode: msgspec.structs.replace(
            of[0][mode], throughput_rps=sum(r[mode].throughput_rps for r in of) / len(of),
            latency_p50_ms=sum(r[mode].latency_p50_ms for r in of) / len(of))
            for mode in of[0]}
    return mean(runs["responses"]), mean(runs["chat"])


def cost_ratio(resp: LoadStats, chat: LoadStats) -> str:
    """What a Responses request costs relative to a chat one through the same broker: per request
    (chat's throughput over Responses'; the box is CPU-bound, so that is CPU per request) and in p50
    latency, each against the target."""
    per_request = chat.throughput_rps / resp.throughput_rps if resp.throughput_rps else float("inf")
    p50 = resp.latency_p50_ms / chat.latency_p50_ms if chat.latency_p50_ms else float("inf")
    verdict = "within" if max(per_request, p50) <= RESPONSES_TARGET else "OVER"
    return (f"cost vs chat x{per_request:.3f} per request (throughput), x{p50:.3f} p50 -> {verdict} the "
            f"x{RESPONSES_TARGET:.2f} target")


def litellm(opts: argparse.Namespace, upstream_url: str, workers: int, tmp: Path) -> dict[str, LoadStats] | None:
    binary = Path(opts.litellm_bin)
    if not binary.exists():
        print(f"  (LiteLLM not installed at {binary}: skipped)")
        return None
    config = tmp / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: fake-model\n    litellm_params: {model: openai/fake-model, "
        f"api_base: '{upstream_url}', api_key: fake}}\n"
        "litellm_settings: {telemetry: false, drop_params: true, set_verbose: false, turn_off_message_logging: true}\n"
        f"general_settings: {{master_key: {LITELLM_KEY}, disable_spend_logs: true, disable_error_logs: true}}\n"
    )
    port = free_port()
    # LITELLM_LOCAL_MODEL_COST_MAP: don't wait on fetching prices from GitHub at start.
    proc = start([str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                  "--num_workers", str(workers)], tmp / f"litellm-{workers}.log",
                 env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}, cwd=tmp)
    try:
        wait_ready(f"http://127.0.0.1:{port}/v1/models", proc, 120, {"authorization": f"Bearer {LITELLM_KEY}"})
        return measure(f"LiteLLM ({workers} worker{'s' if workers > 1 else ''})",
                       f"http://127.0.0.1:{port}/v1", LITELLM_KEY, "fake-model", opts)
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=4000, help="non-stream requests per target")
    parser.add_argument("--stream-requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per upstream stream")
    parser.add_argument("--api-workers", type=int, default=1, help="broker API processes")
    parser.add_argument("--worker-procs", type=int, default=1, help="broker worker processes")
    parser.add_argument("--litellm-bin", default=os.environ.get("LITELLM_BIN", "/opt/litellm-venv/bin/litellm"))
    parser.add_argument("--litellm-workers", type=int, nargs="*", default=[1])
    parser.add_argument("--messages", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure POST /v1/messages, relayed to an Anthropic fake and translated to chat")
    parser.add_argument("--responses", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure POST /v1/responses, translated to chat, against the broker's chat")
    goals = parser.add_argument_group("issue 22's goals (the table at the end)")
    goals.add_argument("--goals", action=argparse.BooleanOptionalAction, default=True,
                       help="c=1 latency, c=50, open loop, per-hop timeline, CPU and Redis commands per request")
    goals.add_argument("--c1-requests", type=int, default=1000)
    goals.add_argument("--c1-stream-requests", type=int, default=500)
    goals.add_argument("--c50-requests", type=int, default=2000)
    goals.add_argument("--open-loop-s", type=float, default=10.0, help="open loop at half the c=64 rate, seconds")
    goals.add_argument("--burst", action=argparse.BooleanOptionalAction, default=True,
                       help="open --burst-streams streams at --burst-rate against one API process")
    goals.add_argument("--burst-streams", type=int, default=10_000)
    goals.add_argument("--burst-rate", type=float, default=500.0, help="streams opened per second")
    goals.add_argument("--burst-stream-s", type=float, default=1.0, help="how long each burst stream lasts")
    goals.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                       help="Redis memory and API RSS per open stream, --hold-streams held open")
    goals.add_argument("--hold-streams", type=int, default=1000)
    goals.add_argument("--hold-stream-s", type=float, default=10.0, help="how long each held stream lasts")
    parser.add_argument("--durability", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure what `redis.durability: replicated` adds at c=1 (bench/durability.py, "
                             "on a primary and a replica of its own, ~20 s)")
    opts = parser.parse_args()
    began = time.monotonic()  # the whole run's wall time is printed: the default run should stay ~5 minutes

    tmp = Path(tempfile.mkdtemp(prefix="llm-broker-bench-"))
    # A Redis of its own unless $REDIS_URL says otherwise: commandstats and Redis's CPU are exact only
    # when nobody else uses it.
    own_redis = None if "REDIS_URL" in os.environ else start_embedded_redis(prefer_real=True)
    if own_redis is not None and not own_redis.description.startswith("redis-server"):
        own_redis.stop()
        raise SystemExit("bench.compare needs redis-server on PATH, or $REDIS_URL")
    redis_url = own_redis.url if own_redis is not None else os.environ["REDIS_URL"]
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    upstream_port, api_port, anthropic_port = free_port(), free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
    anthropic_origin = f"http://127.0.0.1:{anthropic_port}"  # as https://api.anthropic.com: no /v1
    providers = [f"  up: {{kind: openai, base_url: '{upstream_url}', api_key: fake, concurrency: 256}}\n"]
    models = ["  fake-model: [{provider: up, model: fake-model}]\n"]
    if opts.messages:
        providers.append(f"  ant: {{kind: anthropic, base_url: '{anthropic_origin}', api_key: {ANTHROPIC_KEY}, "
                         "concurrency: 256}\n")
        models.append(f"  claude-bench: [{{provider: ant, model: {CLAUDE_MODEL}}}]\n")
    slow = {"burst": SlowProvider("burst", "burst-model", free_port(), opts.chunks, opts.burst_stream_s / opts.chunks),
            "hold": SlowProvider("hold", "hold-model", free_port(), opts.chunks, opts.hold_stream_s / opts.chunks)}
    for provider in (slow["burst"],) * opts.burst + (slow["hold"],) * opts.memory:
        provider_line, model_line = provider.config_lines()
        providers.append(provider_line)
        models.append(model_line)
    (tmp / "broker.yaml").write_text(
        f"redis_url: {redis_url}\nnamespace: {namespace}\n"
        f"providers:\n{''.join(providers)}models:\n{''.join(models)}"
        # Limits high enough never to bite, so every request pays for the rate-limit round trip.
        f"tenants:\n  bench: {{keys: ['{hash_key(BROKER_KEY)}'], rpm: 100000000, tpm: 100000000000, "
        "max_concurrent: 100000}\n"
    )
    config = tmp / "broker.yaml"
    r = redis.Redis.from_url(redis_url)
    memory_before = r.info("memory")["used_memory"]
    print(f"fake upstream :{upstream_port} ({opts.chunks} chunks/stream), "
          + (f"fake Anthropic upstream :{anthropic_port}, " if opts.messages else "")
          + f"broker API :{api_port} ({opts.api_workers} proc, {opts.worker_procs} worker proc"
          + (" per provider" if opts.messages else "") + f"), c={opts.concurrency}, logs in {tmp}\n"
          + (f"Redis of its own: {own_redis.description}" if own_redis else f"shared Redis {redis_url}"))

    upstreams = [start([sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(upstream_port),
                        "--chunks", str(opts.chunks)], tmp / "upstream.log")]
    if opts.messages:
        upstreams.append(start([sys.executable, "-m", "tests.fakes.anthropic_upstream", "--port", str(anthropic_port),
                                "--api-key", ANTHROPIC_KEY, "--chunks", str(opts.chunks)], tmp / "anthropic.log"))
    broker_procs: list[subprocess.Popen[bytes]] = []
    messages: dict[str, dict[str, LoadStats]] = {}
    responses: dict[str, LoadStats] = {}
    chat_beside: dict[str, LoadStats] = {}
    latency = burst = held = None
    hops: list[str] = []
    try:
        wait_ready(f"{upstream_url}/models", upstreams[0], 30)
        if opts.messages:  # it only serves POST /v1/messages: a 405 to a GET says it is up
            wait_ready(f"{anthropic_origin}/v1/messages", upstreams[1], 30)
        broker_procs += [start([sys.executable, "-m", "broker.cli", "worker", "--config", str(tmp / "broker.yaml"),
                                "--provider", provider, "--log-level", "warning"], tmp / f"worker-{provider}-{i}.log")
                         for provider in ("up",) for i in range(opts.worker_procs)]
        broker_procs.append(start([sys.executable, "-m", "broker.cli", "api", "--config", str(tmp / "broker.yaml"),
                                   "--host", "127.0.0.1", "--port", str(api_port), "--workers", str(opts.api_workers),
                                   "--log-level", "warning"], tmp / "api.log"))
        wait_ready(f"http://127.0.0.1:{api_port}/v1/models", broker_procs[-1], 60)

        broker_url = f"http://127.0.0.1:{api_port}/v1"
        # The API and chat's workers; the other providers' workers run only in their own phases, so
        # their idle polling is in no per-request figure.
        probe = Probe([proc.pid for proc in broker_procs], r if own_redis is not None else None)
        if opts.memory:  # first, while nothing of the other phases is there to expire during it
            held = held_memory(slow["hold"], config, tmp, broker_url, BROKER_KEY, broker_procs[-1].pid, upstream_url,
                               probe.redis, opts.hold_streams, opts.burst_rate)
            print(f"  {'held streams':<30} {held.open_streams} open, {held.text_bytes_per_stream:.0f} B text each: "
                  f"Redis {held.redis_bytes_per_stream or 0:.0f} B (client buffers "
                  f"{held.redis_client_bytes_per_stream or 0:+.0f} B of it), "
                  f"API RSS {held.api_rss_bytes_per_stream:.0f} B per stream", flush=True)
        direct = measure("upstream direct", upstream_url, "fake", "fake-model", opts)
        broker = measure("llm-broker", broker_url, BROKER_KEY, "fake-model", opts, probe=probe)
        if opts.goals:
            latency = measure_latency(upstream_url, broker_url, BROKER_KEY, opts, probe,
                                      broker["non-stream"].throughput_rps)
            hops = timeline(broker_url, upstream_url, BROKER_KEY, "fake", "fake-model",
                            redis_url if own_redis is not None else None)
        if opts.burst:
            burst = run_burst(slow["burst"], config, tmp, broker_url, BROKER_KEY, opts.burst_streams, opts.burst_rate)
            print(f"  {'burst':<30} {burst.summary()}", flush=True)
        if opts.messages:
            broker_procs += [start([sys.executable, "-m", "broker.cli", "worker", "--config", str(config),
                                    "--provider", "ant", "--log-level", "warning"], tmp / f"worker-ant-{i}.log")
                             for i in range(opts.worker_procs)]
            time.sleep(1.0)  # its first heartbeat: before it, the API has no live worker to admit to
            messages["direct"] = measure("messages: Anthropic direct", f"{anthropic_origin}/v1", ANTHROPIC_KEY,
                                         CLAUDE_MODEL, opts, api="messages")
            messages["relayed"] = measure("messages: broker relayed", broker_url, BROKER_KEY, "claude-bench", opts,
                                          api="messages")
            messages["translated"] = measure("messages: broker translated", broker_url, BROKER_KEY, "fake-model",
                                             opts, api="messages")
        if opts.responses:
            responses, chat_beside = paired(broker_url, opts)
        memory_after = r.info("memory")["used_memory"]
        leftover = sum(1 for _ in r.scan_iter(match=f"{namespace}:*", count=1000))
        # Stored responses are kept on purpose (store defaults to true; responses.store_ttl_s, 30 days).
        stored = sum(1 for _ in r.scan_iter(match=f"{namespace}:response:*", count=1000)) if opts.responses else 0
        for proc in broker_procs + upstreams[1:]:
            stop(proc)
        theirs = {w: litellm(opts, upstream_url, w, tmp) for w in opts.litellm_workers}
    finally:
        for proc in upstreams + broker_procs:
            stop(proc)
        drop_namespace(r, namespace)
        if own_redis is not None:
            own_redis.stop()

    print("\nsummary (c=%d)" % opts.concurrency)
    for mode in ("non-stream", "stream"):
        b, d = broker[mode], direct[mode]
        line = (f"  {mode:<10} broker {b.throughput_rps:7.1f} req/s vs upstream alone {d.throughput_rps:7.1f}; "
                f"added latency {added(b, d)}")
        if mode == "stream":
            line += ttft(b, d, "upstream")
        print(line)
        for workers, stats in theirs.items():
            if stats:
                s = stats[mode]
                print(f"  {'':<10} LiteLLM ({workers}w) {s.throughput_rps:7.1f} req/s -> broker is "
                      f"{b.throughput_rps / s.throughput_rps:.1f}x")
    if messages:
        print("  /v1/messages (Anthropic Messages API in; chat's figures above)")
        for mode in ("non-stream", "stream"):
            rel, ant = messages["relayed"][mode], messages["direct"][mode]
            tr, d, chat = messages["translated"][mode], direct[mode], broker[mode]
            line = (f"  {mode:<10} relayed    {rel.throughput_rps:7.1f} req/s vs Anthropic upstream alone "
                    f"{ant.throughput_rps:7.1f}; added latency {added(rel, ant)}")
            print(line + (ttft(rel, ant, "upstream") if mode == "stream" else ""))
            line = (f"  {'':<10} translated {tr.throughput_rps:7.1f} req/s vs OpenAI upstream alone "
                    f"{d.throughput_rps:7.1f} (broker chat {chat.throughput_rps:.1f}); added latency {added(tr, d)}, "
                    f"over broker chat {added(tr, chat)}")
            print(line + (ttft(tr, d, "upstream") if mode == "stream" else ""))
    if responses:
        print("  /v1/responses (OpenAI Responses API in, translated to chat; against chat measured beside it, "
              "chat-responses-responses-chat, means)")
        for mode in ("non-stream", "stream"):
            rs, d, chat = responses[mode], direct[mode], chat_beside[mode]
            line = (f"  {mode:<10} responses  {rs.throughput_rps:7.1f} req/s vs OpenAI upstream alone "
                    f"{d.throughput_rps:7.1f} (broker chat {chat.throughput_rps:.1f}); added latency {added(rs, d)}, "
                    f"over broker chat {added(rs, chat)}")
            if mode == "stream":
                line += ttft(rs, d, "upstream") + f", broker chat {chat.ttft_p50_ms:.1f}"
            print(line)
            print(f"  {'':<10} {cost_ratio(rs, chat)}")
    print(f"  Redis used_memory {memory_before / 1e6:.2f} MB before, {memory_after / 1e6:.2f} MB after; "
          f"{leftover} keys left in the broker's namespace (results expire after their TTL"
          + (f"; {stored} of them stored responses, kept responses.store_ttl_s" if responses else "") + ")")
    if hops:
        print("\n" + "\n".join(hops))
    installed = Path(opts.litellm_bin).exists()
    theirs_first = next((stats for stats in theirs.values() if stats), None)
    table = rows(latency, direct, broker, theirs_first, "n/a (not installed)" if not installed else "n/a",
                 probe.costs, burst, held)
    print("\nissue 22's goals (added = broker minus direct, same run; LiteLLM: its first --litellm-workers run)")
    print("\n".join(render(table)))
    if opts.durability:
        # A cost only when configured (README, "What replicated durability costs"): its own stack, since
        # it needs a replica, with the same c=1 load, alternating rounds against the default.
        print("\nredis.durability: replicated against async, c=1, one primary and one replica (bench.durability)",
              flush=True)
        subprocess.run([sys.executable, "-m", "bench.durability", "--rounds", "4"], check=False)
    print(f"  run took {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
