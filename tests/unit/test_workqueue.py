"""The ModelDeployment work queue: dedup, one worker per key, delays, priorities."""

from __future__ import annotations

import asyncio

import pytest

from tramontane_operator.kube.workqueue import HIGH, LOW, LOW_SHARE, QueueClosed, WorkQueue


async def _drain(queue: WorkQueue[str]) -> list[str]:
    out = []
    while len(queue):
        key = await queue.get()
        out.append(key)
        queue.done(key)
    return out


async def test_a_key_added_twice_is_handed_out_once() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for key in ("a", "b", "a", "a"):
        queue.add(key)
    assert await _drain(queue) == ["a", "b"]


async def test_high_keys_go_before_low_ones_and_a_low_key_moves_up() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("refresh-1", LOW)
    queue.add("refresh-2", LOW)
    queue.add("new", HIGH)
    queue.add("refresh-2", HIGH)  # its spec changed meanwhile
    queue.add("new", LOW)  # a lower-priority add does not demote it
    assert (queue.waiting(HIGH), queue.waiting(LOW)) == (2, 1)
    assert await _drain(queue) == ["new", "refresh-2", "refresh-1"]
    assert (queue.waiting(HIGH), queue.waiting(LOW)) == (0, 0)


async def test_a_key_added_while_processing_comes_back_only_after_done() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    key = await queue.get()
    queue.add("a", LOW)
    queue.add("a", HIGH)
    assert len(queue) == 0  # not handed to a second worker meanwhile
    queue.done(key)
    queue.add("b", HIGH)
    assert await _drain(queue) == ["a", "b"]  # requeued at the highest priority asked


async def test_add_after_keeps_the_earliest_delay() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("a", 10.0)
    queue.add_after("a", 0.05)
    queue.add_after("a", 5.0)
    got = await asyncio.wait_for(queue.get(), 1.0)
    assert got == "a"
    queue.done(got)
    await asyncio.sleep(0.1)
    assert len(queue) == 0  # the longer delays were not kept as extra timers


async def test_forget_drops_a_pending_delay() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("a", 0.05)
    queue.forget("a")
    await asyncio.sleep(0.1)
    assert len(queue) == 0


async def test_a_waiting_worker_wakes_on_add_and_on_close() -> None:
    queue: WorkQueue[str] = WorkQueue()
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.add("a")
    done, pending = await asyncio.wait({first, second}, timeout=1.0, return_when="FIRST_COMPLETED")
    assert [t.result() for t in done] == ["a"]
    queue.close()
    with pytest.raises(QueueClosed):
        await asyncio.wait_for(pending.pop(), 1.0)


async def test_a_cancelled_worker_passes_its_wake_up_on() -> None:
    queue: WorkQueue[str] = WorkQueue()
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.add("a")  # wakes the first waiter...
    first.cancel()  # ...which is cancelled before it runs
    assert await asyncio.wait_for(second, 1.0) == "a"


async def test_low_keys_get_a_share_under_sustained_high_load() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("refresh", LOW)
    handed = []
    for i in range(2 * LOW_SHARE):
        queue.add(f"new-{i}", HIGH)
        key = await queue.get()
        handed.append(key)
        queue.done(key)
    assert handed.index("refresh") == LOW_SHARE - 1  # not last, not starved


async def test_each_key_handed_out_reports_its_lane_and_how_long_it_waited() -> None:
    waits: list[tuple[int, float]] = []
    queue: WorkQueue[str] = WorkQueue(on_get=lambda lane, waited: waits.append((lane, waited)))
    queue.add("refresh", LOW)
    queue.add("refresh", HIGH)  # moved up: still timed from its first add
    await asyncio.sleep(0.05)
    queue.done(await queue.get())
    assert [lane for lane, _ in waits] == [HIGH]
    assert waits[0][1] >= 0.04


async def test_retry_backs_off_exponentially_per_key_and_success_resets_it() -> None:
    queue: WorkQueue[str] = WorkQueue(base_delay_s=0.01, max_delay_s=0.08, jitter=0.0)
    delays = [queue.retry("a") for _ in range(6)]
    assert delays == [0.01, 0.02, 0.04, 0.08, 0.08, 0.08]  # doubled, then capped
    assert queue.failures("a") == 6 and queue.failures("b") == 0  # per key
    assert queue.retry("b") == 0.01
    queue.succeeded("a")
    assert queue.failures("a") == 0 and queue.retry("a") == 0.01


async def test_retry_jitter_stays_within_its_band_and_respects_a_floor() -> None:
    queue: WorkQueue[str] = WorkQueue(base_delay_s=1.0, max_delay_s=100.0, jitter=0.2)
    seen = set()
    for i in range(50):
        delay = queue.retry(f"k{i}")
        assert 0.8 <= delay <= 1.2
        seen.add(round(delay, 6))
    assert len(seen) > 1  # jittered: not every key wakes at once
    assert queue.retry("floor", at_least_s=5.0) == 5.0
    queue.close()


async def test_a_retried_key_is_handed_out_after_its_delay() -> None:
    queue: WorkQueue[str] = WorkQueue(base_delay_s=0.05, jitter=0.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    queue.retry("a")
    assert await asyncio.wait_for(queue.get(), 1.0) == "a"
    assert loop.time() - start >= 0.045
