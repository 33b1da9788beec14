"""An ingest process's counters and batches reach the hub's: what they gained, once; a hostile report is refused."""

from __future__ import annotations

import math

import orjson
import pytest

from usagehub import metrics
from usagehub.runtime.ingest_counters import RELAYED, CounterDeltas, add_report, parse_report, report_figures
from usagehub.runtime.ingest_frames import FrameError


def _value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_what_the_counters_gained_is_taken_once_and_added_where_it_arrives() -> None:
    deltas, batches = CounterDeltas(), [(0.125, 40)]
    deltas.take()  # what earlier tests counted in this process is not this test's
    metrics.EVENTS_ACCEPTED.inc(7)
    metrics.QUARANTINED.labels("not entitled").inc(2)
    figures = report_figures(deltas, batches)
    assert ("usagehub_events_accepted_total", {}, 7.0) in figures["counters"]
    assert ("usagehub_quarantined_total", {"reason": "not entitled"}, 2.0) in figures["counters"]
    assert figures["batches"] == [(0.125, 40)] and batches == []
    assert report_figures(deltas, batches) == {}  # nothing gained since
    # The hub parses the report (as JSON, as it travels) and adds it to its own counters and histograms.
    accepted, refused = _value("usagehub_events_accepted_total"), _value("usagehub_quarantined_total",
                                                                         reason="not entitled")
    committed, sizes = _value("usagehub_commit_seconds_count"), _value("usagehub_batch_messages_sum")
    add_report(*parse_report(orjson.loads(orjson.dumps(figures))))
    assert _value("usagehub_events_accepted_total") == accepted + 7
    assert _value("usagehub_quarantined_total", reason="not entitled") == refused + 2
    assert _value("usagehub_commit_seconds_count") == committed + 1
    assert _value("usagehub_batch_messages_sum") == sizes + 40


@pytest.mark.parametrize("counters", [
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
def test_hostile_counters_are_refused_and_count_nothing(counters: object) -> None:
    before = _value("usagehub_events_accepted_total")
    with pytest.raises(FrameError):
        add_report(*parse_report({"counters": counters, "batches": [[0.1, 3]]}))
    assert _value("usagehub_events_accepted_total") == before


@pytest.mark.parametrize("figures", [
    [], {"counters": [], "extra": 1}, {"batches": {}}, {"batches": [[0.1]]}, {"batches": [[-1, 3]]},
    {"batches": [[math.nan, 3]]}, {"batches": [[0.1, 0]]}, {"batches": [[0.1, 2.5]]}, {"batches": [[0.1, True]]},
    {"batches": [[1e9, 3]]}, {"batches": [["0.1", 3]]},
])
def test_hostile_batches_are_refused_and_observe_nothing(figures: object) -> None:
    before = _value("usagehub_commit_seconds_count")
    with pytest.raises(FrameError):
        add_report(*parse_report(figures))
    assert _value("usagehub_commit_seconds_count") == before


def test_the_relayed_label_names_are_the_declared_ones() -> None:
    """A child's labels are checked against RELAYED: a counter declared with other names would refuse every report."""
    for counter, names in RELAYED.items():
        if names:
            counter.labels(**dict.fromkeys(names, "label-check"))  # prometheus_client: ValueError on other names
        else:
            with pytest.raises(ValueError, match="No label names"):
                counter.labels()
