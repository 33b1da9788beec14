"""Prometheus metrics: per-message signals are counters here, never log lines."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

MESSAGES_IN = Counter("usagehub_messages_in_total", "Raw messages received", ["transport"], registry=REGISTRY)
EVENTS_ACCEPTED = Counter("usagehub_events_accepted_total", "New usage events stored", registry=REGISTRY)
EVENTS_DUPLICATE = Counter("usagehub_events_duplicate_total", "Events already stored (replays, redeliveries)",
                           registry=REGISTRY)
QUARANTINED_LABELS = ("reason",)  # named once: runtime.ingest_counters checks a child's labels against them
QUARANTINED = Counter("usagehub_quarantined_total", "Messages stored in quarantine", QUARANTINED_LABELS,
                      registry=REGISTRY)
# Faults the hub survives: connections, stalls, partitions, durable totals.
ADAPTER_UP = Gauge("usagehub_adapter_up", "1 while the adapter is connected/listening, else 0", ["adapter"],
                   registry=REGISTRY)
ADAPTER_OUTAGES = Counter("usagehub_adapter_outages_total", "Connection losses (or failed first connects)",
                          ["adapter"], registry=REGISTRY)
ADAPTER_RECOVERIES = Counter("usagehub_adapter_recoveries_total", "Connections restored after an outage",
                             ["adapter"], registry=REGISTRY)
ADAPTER_READ_PAUSES = Counter("usagehub_adapter_read_pauses_total",
                              "Times an adapter stopped reading its connection while received messages waited",
                              ["adapter"], registry=REGISTRY)
COMMIT_WAIT = Gauge("usagehub_pipeline_commit_wait_seconds",
                    "Seconds messages have waited with no commit (0 when nothing waits)", registry=REGISTRY)
STALLED = Gauge("usagehub_pipeline_stalled", "1 while messages wait longer than the stall threshold",
                registry=REGISTRY)
LOCK_TIMEOUT_LABELS = ("what",)
LOCK_TIMEOUTS = Counter("usagehub_lock_timeouts_total", "Statements that gave up waiting for a lock",
                        LOCK_TIMEOUT_LABELS, registry=REGISTRY)
PARTITIONS_CREATED = Counter("usagehub_partitions_created_total", "Event partitions created ahead of time",
                             registry=REGISTRY)
STORED_TOTAL = Gauge("usagehub_ingest_stored", "Durable ingest totals from the database (survive restarts)",
                     ["kind"], registry=REGISTRY)
# Pipeline signals.
BATCH_SIZE = Histogram("usagehub_batch_messages", "Messages per committed batch",
                       buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000), registry=REGISTRY)
COMMIT_SECONDS = Histogram("usagehub_commit_seconds", "Time to write and commit one batch",
                           buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
                           registry=REGISTRY)
PREPAID_DECIDE_SECONDS = Histogram("usagehub_prepaid_decide_seconds",
                                   "Device prepaid request: receipt to decision (the batch's commit)",
                                   buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1),
                                   registry=REGISTRY)
PREPAID_ANSWER_SECONDS = Histogram("usagehub_prepaid_answer_seconds",
                                   "Device prepaid request: receipt to the answer handed to the broker",
                                   buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1),
                                   registry=REGISTRY)
BATCH_RETRIES = Counter("usagehub_batch_retries_total", "Batches retried after a storage failure",
                        registry=REGISTRY)
EVENT_INSERT_FALLBACKS = Counter("usagehub_event_insert_fallbacks_total",
                                 "Batches whose direct copy into events met a stored identity (staged insert instead)",
                                 registry=REGISTRY)
QUEUE_DEPTH = Gauge("usagehub_pipeline_queue_depth", "Messages waiting for a batch", registry=REGISTRY)
DOOR_DROPPED = Counter("usagehub_door_dropped_total",
                       "Input dropped at a door before the pipeline (rate limits, slow clients, caps)",
                       ["door", "reason"], registry=REGISTRY)
QUARANTINE_MERGED = Counter("usagehub_quarantine_merged_total",
                            "Quarantined messages identical to an open entry: counted on it, not stored again",
                            registry=REGISTRY)
QUARANTINE_TRUNCATED = Counter("usagehub_quarantine_truncated_total",
                               "Quarantined payloads cut to the per-row cap (size and SHA-256 kept)",
                               registry=REGISTRY)
QUARANTINE_PRUNED = Counter("usagehub_quarantine_pruned_total",
                            "Quarantine rows deleted by retention (age or row cap)", registry=REGISTRY)
SPARKPLUG_REBIRTHS = Counter("usagehub_sparkplug_rebirth_requests_total",
                             "Sparkplug B rebirth requests (NCMD) sent, by reason", ["reason"], registry=REGISTRY)
SESSION_SEGMENTS = Counter("usagehub_session_segments_replayed_total",
                           "Queued session segments replayed by this process's session worker", registry=REGISTRY)
SESSION_ROUND_SECONDS = Histogram("usagehub_session_round_seconds", "Time of one session worker round",
                                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=REGISTRY)
SESSION_BACKLOG = Gauge("usagehub_session_queue_segments",
                        "Session queue rows waiting for replay (one per batch and segment touched), as last read",
                        registry=REGISTRY)
SESSION_BACKLOG_AGE = Gauge("usagehub_session_queue_oldest_seconds",
                            "Age of the oldest queued session segment, as last read", registry=REGISTRY)
