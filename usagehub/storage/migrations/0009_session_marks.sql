-- Session walk marks (core.segments): at the start of every segment of event time that holds points
-- of an account and service, the walk state there and what the open session adds within the segment.
-- A batch replays only the segments it touched and stops where the walk state matches a stored mark,
-- so the cost of late data no longer grows with the length of the open session or period.
-- Sessions stored before this migration have no marks: the hub rebuilds them once at start
-- (pipeline.rebuild), before it ingests.
CREATE TABLE session_marks (
    account_id  text        NOT NULL,
    service     text        NOT NULL,
    seg_start   timestamptz NOT NULL,
    entry       jsonb       NOT NULL,
    piece       jsonb,
    created     jsonb       NOT NULL,
    PRIMARY KEY (account_id, service, seg_start)
);
