"""Reset markers: stable under jitter, clock noise and TimeTicks wraps; new on reboot or unexplained drops."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from usagehub.adapters.snmp.markers import TICKS_MODULUS, BootTracker, DeviceMarkers, wrap_explains

T0 = 1_714_550_000.0


@settings(max_examples=200, deadline=None)
@given(
    boot_uptime=st.integers(0, TICKS_MODULUS - 1),
    steps=st.lists(st.tuples(st.floats(1, 86_400 * 30), st.floats(-2, 2)), min_size=1, max_size=30),
)
def test_same_boot_keeps_its_marker(boot_uptime: int, steps: list[tuple[float, float]]) -> None:
    tracker, at, uptime = BootTracker(), T0, boot_uptime
    first = tracker.observe(at, uptime)
    for elapsed, jitter in steps:
        at += elapsed
        uptime = (uptime + round(elapsed * 100)) % TICKS_MODULUS  # includes the 497-day wrap
        assert tracker.observe(at + jitter, uptime) == first


@settings(max_examples=200, deadline=None)
@given(uptime=st.integers(100_000, 10**9), elapsed=st.floats(1, 3600), after=st.integers(0, 50_000))
def test_reboot_gives_a_new_marker(uptime: int, elapsed: float, after: int) -> None:
    tracker = BootTracker()
    before = tracker.observe(T0, uptime)
    # the agent restarted: its uptime is far below what the previous poll predicts
    assert tracker.observe(T0 + elapsed, after) != before


def test_first_marker_is_the_bucketed_boot_time() -> None:
    assert BootTracker().observe(T0 + 30, 3000) == f"b{int(T0) // 60 * 60}"
    assert BootTracker().observe(T0, None) == "b?"


@given(bits=st.sampled_from([16, 32, 64]), data=st.data())
def test_wrap_explains_only_plausible_wraps(bits: int, data: st.DataObject) -> None:
    modulus = 2**bits
    previous = data.draw(st.integers(0, modulus - 1))
    delta = data.draw(st.integers(1, modulus - 1))
    current = (previous + delta) % modulus
    if current < previous:
        assert wrap_explains(previous, current, bits) == (delta < modulus // 2)
    assert not wrap_explains(previous, current, None) or current >= previous


def test_counter_epoch_bumps_on_unexplained_drop_and_survives_json() -> None:
    markers = DeviceMarkers()
    assert markers.counter_marker("x", "b1", 2**32 - 5, 32) == "b1#0"
    assert markers.counter_marker("x", "b1", 3, 32) == "b1#0"  # wrap
    assert markers.counter_marker("x", "b1", 1, 32) == "b1#1"  # reset
    assert markers.counter_marker("y", "b1", 9, None, discontinuity=77) == "b1#0@77"
    assert markers.counter_marker("y", "b1", 8, None) == "b1#1"  # a register never wraps
    restored = DeviceMarkers.from_json(markers.to_json())
    assert restored.counter_marker("x", "b1", 1, 32) == "b1#1"
    assert DeviceMarkers.from_json({"garbage": 1}).counters == {}
