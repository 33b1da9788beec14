-- Segments of session walks waiting to be replayed (pipeline.session_worker).
-- With deferred sessions the ingest transaction stores events, usage and points and queues the
-- (account, service, segment) it touched here, under the account's lock; a session worker claims
-- rows, replays them (core.segments), reconciles the billing records and deletes the rows in one
-- transaction. A billing run replays the rows of its accounts first. An empty queue means every
-- billing record reflects every stored point.
CREATE TABLE session_queue (
    account_id  text        NOT NULL,
    service     text        NOT NULL,
    seg_start   timestamptz NOT NULL,
    queued_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, service, seg_start)
);
