"""An ingest process's counters reach the hub's: what they gained, once; a hostile report is refused."""

from __future__ import annotations

import math

import orjson
import pytest

from usagehub import metrics
from usagehub.runtime.ingest_counters import CounterDeltas, add_deltas, parse_deltas
from usagehub.runtime.ingest_frames import FrameError


def _value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_what_the_counters_gained_is_taken_once_and_added_where_it_arrives() -> None:
    deltas = CounterDeltas()
    deltas.take()  # what earlier tests counted in this process is not this test's
    metrics.EVENTS_ACCEPTED.inc(7)
    metrics.QUARANTINED.labels("not entitled").inc(2)
    taken = deltas.take()
    assert ("usagehub_events_accepted_total", {}, 7.0) in taken
    assert ("usagehub_quarantined_total", {"reason": "not entitled"}, 2.0) in taken
    assert deltas.take() == []  # nothing gained since
    # The hub parses the report (as JSON, as it travels) and adds it to its own counters.
    accepted, refused = _value("usagehub_events_accepted_total"), _value("usagehub_quarantined_total",
                                                                         reason="not entitled")
    add_deltas(parse_deltas(orjson.loads(orjson.dumps(taken))))
    assert _value("usagehub_events_accepted_total") == accepted + 7
    assert _value("usagehub_quarantined_total", reason="not entitled") == refused + 2


@pytest.mark.parametrize("doc", [
    {"usagehub_events_accepted_total": 1},
    [["usagehub_events_accepted_total", {}]],
    [["usagehub_ledger_total", {}, 1]],  # not a relayed counter
    [["usagehub_events_accepted_total", {"reason": "x"}, 1]],  # labels it does not have
    [["usagehub_quarantined_total", {}, 1]],  # labels it needs
    [["usagehub_quarantined_total", {"reason": 5}, 1]],
    [["usagehub_quarantined_total", {"reason": "r" * 201}, 1]],
    [["usagehub_events_accepted_total", {}, -1]],
    [["usagehub_events_accepted_total", {}, 0]],
    [["usagehub_events_accepted_total", {}, True]],
    [["usagehub_events_accepted_total", {}, "1"]],
    [["usagehub_events_accepted_total", {}, 1e13]],
    [["usagehub_events_accepted_total", {}, math.inf]],
])
def test_a_hostile_report_is_refused_and_counts_nothing(doc: object) -> None:
    before = _value("usagehub_events_accepted_total")
    with pytest.raises(FrameError):
        add_deltas(parse_deltas(doc))
    assert _value("usagehub_events_accepted_total") == before
