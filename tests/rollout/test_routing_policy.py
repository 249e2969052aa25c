"""RoutingPolicy: least outstanding requests, routing-key affinity, health, LRU bound."""

import pytest

from temper.rollout.routing_policy import NoWorkerError, RoutingPolicy

A, B, C = "http://a:1", "http://b:1", "http://c:1"


def policy(*urls: str, **kw) -> RoutingPolicy:
    p = RoutingPolicy(**kw)
    for u in urls:
        p.add(u)
    return p


def send(p: RoutingPolicy, key=None, exclude=()):
    worker = p.choose(key, exclude)
    p.started(worker)
    return worker


def test_least_outstanding_spreads_unkeyed_requests():
    p = policy(A, B, C)
    assert [send(p).url for _ in range(3)] == [A, B, C]
    p.finished(p.workers[B])
    assert send(p).url == B  # B has the fewest in flight now
    assert p.workers[B].outstanding == 1 and p.workers[B].total_requests == 2


def test_ties_go_to_the_worker_that_served_fewer():
    p = policy(A, B)
    for _ in range(3):
        p.finished(send(p))
    # A served 2, B 1, none outstanding: B is next.
    assert send(p).url == B


def test_affinity_keeps_a_key_on_one_worker_even_when_busier():
    p = policy(A, B)
    first = send(p, "group-0")
    others = [send(p, "group-0").url for _ in range(3)]
    assert others == [first.url] * 3
    assert p.workers[first.url].outstanding == 4
    assert send(p, "group-1").url != first.url  # a new key goes to the less loaded worker
    entry = p.affinity["group-0"]
    assert (entry.url, entry.requests, entry.reassigned) == (first.url, 4, 0)


def test_groups_balance_over_workers():
    p = policy(A, B)
    for group in range(4):
        for _ in range(4):
            send(p, f"group-{group}")
    assert [p.workers[u].outstanding for u in (A, B)] == [8, 8]


def test_key_moves_when_its_worker_fails_or_leaves():
    p = policy(A, B)
    assert send(p, "k").url == A
    p.mark_failed(A, at_once=True)
    assert send(p, "k").url == B
    assert p.affinity["k"].reassigned == 1
    p.remove(B)
    p.mark_healthy(A)
    assert send(p, "k").url == A
    assert p.affinity["k"].reassigned == 2


def test_health_needs_consecutive_failures():
    p = policy(A, B, unhealthy_after=3)
    p.mark_failed(A)
    p.mark_failed(A)
    assert p.workers[A].healthy
    p.mark_healthy(A)
    for _ in range(3):
        p.mark_failed(A)
    assert not p.workers[A].healthy
    assert [w.url for w in p.healthy()] == [B]


def test_exclude_and_no_worker_error():
    p = policy(A, B)
    assert send(p, exclude=[A]).url == B
    with pytest.raises(NoWorkerError, match="http://a:1 .healthy.*http://b:1"):
        p.choose(None, exclude=[A, B])
    p.mark_failed(A, at_once=True)
    p.mark_failed(B, at_once=True)
    assert send(p, exclude=[B]).url == A  # all unhealthy: still tried (slow, not necessarily dead)
    with pytest.raises(NoWorkerError, match="none registered"):
        RoutingPolicy().choose()


def test_affinity_is_lru_bounded():
    p = policy(A, B, max_keys=3)
    for k in ["k1", "k2", "k3"]:
        send(p, k)
    send(p, "k1")  # refresh k1
    send(p, "k4")  # evicts k2, the least recently used
    assert list(p.affinity) == ["k3", "k1", "k4"]


def test_add_normalizes_and_is_idempotent():
    p = RoutingPolicy()
    p.add("http://a:1/")
    p.mark_failed(A, at_once=True)
    p.add(A)
    assert p.urls() == [A] and p.workers[A].healthy
