"""The built-in router over fake engines on 127.0.0.1: forwarding, affinity, streaming, admin, failover."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from contextlib import ExitStack

import httpx
import pytest
from fastapi import FastAPI
from rollout_helpers import fake_engine_app, free_port_url, serve

from temper.rollout.router import WORKER_HEADER, main, start_router

TIMEOUT = httpx.Timeout(30.0)


@pytest.fixture()
def fakes():
    """Two fake engines (apps, urls) and a router over them (stopped afterwards)."""
    apps = [fake_engine_app("e0", delay=0.1), fake_engine_app("e1", delay=0.1)]
    with ExitStack() as stack:
        urls = [stack.enter_context(serve(app)) for app in apps]
        router = stack.enter_context(start_router(urls, worker_startup_timeout=5))
        with httpx.Client(base_url=router.url, timeout=TIMEOUT, trust_env=False) as client:
            yield apps, urls, router, client


def generate(client, key=None, **body):
    headers = {"X-Routing-Key": key} if key else {}
    return client.post("/generate", json={"input_ids": [1, 2, 3], **body}, headers=headers)


def test_forwards_body_unchanged_and_names_the_worker(fakes):
    apps, urls, _, client = fakes
    reply = generate(client, sampling_params={"max_new_tokens": 3}, return_logprob=True)
    assert reply.status_code == 200
    assert reply.json()["output_ids"] == [7, 8, 9]
    served = urls.index(reply.headers[WORKER_HEADER])
    path, body, _ = apps[served].state.calls[-1]
    assert path == "/generate" and body == {
        "input_ids": [1, 2, 3],
        "sampling_params": {"max_new_tokens": 3},
        "return_logprob": True,
    }


def test_error_status_passes_through(fakes):
    _, _, _, client = fakes
    reply = generate(client, sampling_params={"max_new_tokens": -1})
    assert reply.status_code == 400 and "max_new_tokens" in reply.json()["error"]["message"]


def test_routing_key_and_session_id_stick_to_one_engine(fakes):
    _, _, router, client = fakes
    by_header = {generate(client, key="group-7").headers[WORKER_HEADER] for _ in range(4)}
    by_session = {generate(client, session_id="s-1").headers[WORKER_HEADER] for _ in range(4)}
    assert len(by_header) == 1 and len(by_session) == 1
    affinity = router.router.policy.affinity
    assert affinity["group-7"].requests == 4 and affinity["s-1"].requests == 4


def test_concurrent_requests_spread_by_least_outstanding(fakes):
    _, urls, router, _ = fakes

    async def burst() -> list[str]:
        async with httpx.AsyncClient(base_url=router.url, timeout=TIMEOUT, trust_env=False) as c:
            replies = await asyncio.gather(*(c.post("/generate", json={"input_ids": [1]}) for _ in range(6)))
        return [r.headers[WORKER_HEADER] for r in replies]

    served = asyncio.run(asyncio.wait_for(burst(), 30))
    assert sorted(served.count(u) for u in urls) == [3, 3]
    assert all(w.outstanding == 0 for w in router.router.policy.workers.values())


def test_streams_pass_through(fakes):
    _, _, _, client = fakes
    with client.stream("POST", "/generate", json={"input_ids": [1], "stream": True}) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert [json.loads(e)["output_ids"] for e in events[:-1]] == [[7], [7, 8], [7, 8, 9]]
    with client.stream("POST", "/v1/chat/completions", json={"messages": [], "stream": True}) as reply:
        chunks = [line for line in reply.iter_lines() if line.startswith("data: ")]
    assert len(chunks) == 3 and chunks[-1] == "data: [DONE]"


def test_worker_admin_routes(fakes):
    _, urls, _, client = fakes
    assert [w["url"] for w in client.get("/workers").json()["workers"]] == urls
    assert client.get("/list_workers").json() == {"urls": urls}
    assert client.post("/remove_worker", params={"url": urls[1]}).json()["status"] == "ok"
    assert client.get("/list_workers").json() == {"urls": urls[:1]}
    assert client.post("/add_worker", params={"url": urls[1]}).status_code == 200
    assert client.post("/workers", json={"url": urls[1]}).status_code == 200  # again: idempotent
    assert client.get("/list_workers").json() == {"urls": urls}
    assert client.post("/remove_worker", params={"url": "http://nowhere:1"}).status_code == 404


def test_registration_health_checks_the_worker():
    dead = free_port_url()
    with (
        start_router([], worker_startup_timeout=0.3) as router,
        httpx.Client(base_url=router.url, timeout=TIMEOUT, trust_env=False) as client,
    ):
        assert client.get("/health").status_code == 503  # no workers yet
        reply = client.post("/workers", json={"url": dead})
        assert reply.status_code == 400 and dead in reply.json()["error"]["message"]
        assert client.post("/workers", json={}).status_code == 400
        assert client.get("/list_workers").json() == {"urls": []}
        assert client.post("/generate", json={"input_ids": [1]}).status_code == 503


def test_fan_out_and_info_routes(fakes):
    apps, _, _, client = fakes
    assert client.post("/flush_cache").status_code == 200
    assert client.post("/abort_request", json={"abort_all": True}).status_code == 200
    for app in apps:
        paths = [c[0] for c in app.state.calls]
        assert "/flush_cache" in paths and "/abort_request" in paths
        assert app.state.calls[-1][1] == {"abort_all": True}
    assert client.get("/health").status_code == 200
    assert client.get("/v1/models").json()["data"][0]["id"] in ("e0", "e1")
    assert client.get("/get_weight_version").json() == {"weight_version": "v1"}
    loads = client.get("/v1/loads").json()["loads"]
    assert len(loads) == 2 and {entry["num_waiting_reqs"] for entry in loads} == {2}


def test_refused_connection_fails_over_to_another_worker():
    app = fake_engine_app("alive")
    with serve(app) as alive, ExitStack() as stack:
        doomed = stack.enter_context(serve(fake_engine_app("doomed")))
        with start_router([doomed, alive], worker_startup_timeout=5) as router:
            stack.close()  # the first worker goes away after registration
            with httpx.Client(base_url=router.url, timeout=TIMEOUT, trust_env=False) as client:
                replies = [client.post("/generate", json={"input_ids": [1]}) for _ in range(3)]
            assert [r.headers[WORKER_HEADER] for r in replies] == [alive] * 3
            assert not router.router.policy.workers[doomed].healthy


def test_command_line_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--workers" in capsys.readouterr().out


def test_router_flags_reach_temper_router_and_the_others_are_named(caplog, tmp_path):
    """--router-* (sglang-router's names): the ones temper's router has set it; the rest are named once as
    unused; a bad value stops the run at parse time."""
    import logging

    from rollout_helpers import make_args, write_jsonl

    from temper.config import ConfigError
    from temper.rollout import RolloutManager

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"input": "q"}])
    args = make_args("--prompt-data", prompts, "--router-health-check-interval-secs", "3", "--router-request-timeout-secs", "7.5",
                     "--router-max-concurrent-requests", "64", "--router-policy", "cache_aware")
    with serve(fake_engine_app("engine")) as url, caplog.at_level(logging.WARNING, logger="temper.rollout.manager"):
        manager = RolloutManager(args, [url])
        try:
            router = manager._router.router
            assert (router.health_check_interval, router.request_timeout, router.max_connections) == (3, 7.5, 64)
        finally:
            manager.close()
    assert "temper's router does not use --router-policy" in caplog.text
    with pytest.raises(ConfigError, match="--router-health-check-timeout-secs must be a positive number, got 0"):
        make_args("--router-health-check-timeout-secs", "0")


def stuck_engine_app():
    """An engine that registered and then stopped answering: /health answered once, then nothing answers."""
    app = FastAPI()
    app.state.answered = False

    @app.get("/health")
    async def health():
        if app.state.answered:
            await asyncio.sleep(3600)
        app.state.answered = True
        return {}

    @app.get("/health_generate")
    @app.post("/generate")
    async def hang():
        await asyncio.sleep(3600)

    return app


def test_fault_tolerance_takes_a_stuck_worker_out_and_sends_its_request_elsewhere():
    """The request in flight on the worker whose health check (a generation) times out is sent again, whole,
    to the other worker; the listener hears which worker left and why."""
    failed = []
    with serve(stuck_engine_app()) as stuck, serve(fake_engine_app("alive")) as alive:
        with start_router([stuck, alive], worker_startup_timeout=5, fault_tolerant=True, health_check_interval=0.2,
                          health_check_timeout=0.5) as router:
            router.router.on_worker_failed = lambda url, reason: failed.append((url, reason))
            with httpx.Client(base_url=router.url, timeout=TIMEOUT, trust_env=False) as client:
                reply = client.post("/generate", json={"input_ids": [1, 2]})
            assert reply.status_code == 200 and reply.headers[WORKER_HEADER] == alive
            assert router.router.policy.urls() == [alive]
    assert failed == [(stuck, "its health check (a generation) got no answer within 0.5 s")]


def test_fault_tolerance_flags_reach_the_router(tmp_path):
    from rollout_helpers import make_args

    from temper.config import ConfigError
    from temper.rollout.router_flags import router_settings

    args = make_args("--use-fault-tolerance", "--rollout-health-check-interval", "2",
                     "--rollout-health-check-timeout", "7", "--rollout-health-check-first-wait", "3")
    settings, _ = router_settings(args)
    assert settings == {"fault_tolerant": True, "health_check_interval": 2, "health_check_timeout": 7,
                        "health_check_first_wait": 3}
    with pytest.raises(ConfigError, match="--rollout-health-check-timeout must be a positive number of seconds"):
        make_args("--use-fault-tolerance", "--rollout-health-check-timeout", "0")
    with pytest.raises(ConfigError, match="engine health checks are part of --use-fault-tolerance"):
        make_args("--rollout-health-check-interval", "5")


def test_api_key_is_checked_on_every_route_and_the_workers_get_theirs():
    """With api_key, every route but /health answers 401 without it; the engines get worker_api_key (not
    the client's key) on forwarded requests and on the router's own calls."""
    app = fake_engine_app("engine")
    with serve(app) as url, start_router([url], worker_startup_timeout=5, api_key="client-key",
                                         worker_api_key="engine-key") as router:
        with httpx.Client(base_url=router.url, timeout=TIMEOUT, trust_env=False) as client:
            assert client.get("/health").status_code == 200
            for method, path in (("POST", "/generate"), ("GET", "/workers"), ("POST", "/add_worker"),
                                 ("POST", "/remove_worker"), ("POST", "/flush_cache"), ("GET", "/v1/loads")):
                r = client.request(method, path, json={"input_ids": [1]})
                assert r.status_code == 401 and "--api-key" in r.json()["error"]["message"], path
            auth = {"Authorization": "Bearer client-key"}
            assert client.post("/generate", json={"input_ids": [1]}, headers=auth).status_code == 200
            assert client.post("/flush_cache", headers=auth).status_code == 200
            assert client.get("/list_workers", headers=auth).json() == {"urls": [url]}
    assert [(path, headers["authorization"]) for path, _, headers in app.state.calls] == [
        ("/generate", "Bearer engine-key"), ("/flush_cache", "Bearer engine-key")]


def test_a_router_beyond_loopback_needs_an_api_key(capsys):
    from temper.rollout.router import Router, RouterThread

    with pytest.raises(ValueError, match=r"on 0\.0\.0\.0 \(beyond loopback\) without an API key.*--api-key KEY"):
        RouterThread(Router([]), host="0.0.0.0")
    with pytest.raises(SystemExit) as exit_info:
        main(["--host", "0.0.0.0", "--port", "0"])
    assert exit_info.value.code == 2 and "--api-key KEY" in capsys.readouterr().err
    with RouterThread(Router([], api_key="k"), host="0.0.0.0").start() as router:  # with a key it starts
        assert httpx.get(f"http://127.0.0.1:{router.port}/health", timeout=TIMEOUT, trust_env=False).status_code == 503


def test_fault_tolerant_router_spreads_a_burst_over_the_workers():
    """Requests that arrive together are counted on their worker as soon as it is chosen, so least-outstanding
    routing splits a burst evenly (a count taken later sent a whole burst to one engine)."""
    apps = [fake_engine_app("e0", delay=0.5), fake_engine_app("e1", delay=0.5)]
    with serve(apps[0]) as u0, serve(apps[1]) as u1:
        with start_router([u0, u1], worker_startup_timeout=5, fault_tolerant=True, health_check_interval=60) as router:

            async def burst() -> list[httpx.Response]:
                limits = httpx.Limits(max_connections=40)
                async with httpx.AsyncClient(base_url=router.url, timeout=TIMEOUT, limits=limits, trust_env=False) as c:
                    return await asyncio.gather(*(c.post("/generate", json={"input_ids": [i]}) for i in range(40)))

            replies = asyncio.run(burst())
            assert [w.outstanding for w in router.router.policy.workers.values()] == [0, 0]
    served = [r.headers[WORKER_HEADER] for r in replies]
    assert all(r.status_code == 200 for r in replies) and sorted(Counter(served).values()) == [20, 20]
