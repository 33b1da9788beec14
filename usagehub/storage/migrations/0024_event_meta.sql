-- Dictionary of what every reading of a meter repeats (issue 18, bench/storage_size.py --breakdown).
--
-- unit, kind, profile_id and service cost ~38 B of text in every events row although a meter's readings
-- all carry the same four values. They move to event_meta, one row per distinct combination, and an events
-- row keeps its integer meta_id (4 B at the end of the row, inside the alignment padding the row had
-- anyway). Nothing is lost: each event still names its own unit, kind, profile and service (a profile
-- changed later gives new events a new meta_id, old ones keep theirs), and the identity (the primary key
-- device_id, meter, ts, event_id; DESIGN 1) is unchanged.
--
-- Readers that need the four columns read the view events_described, which has the columns events had
-- before, in the same order. It is a LEFT JOIN on event_meta's key, so a query that names none of the four
-- (counts, neighbours of a reading) is planned without the join. There is no foreign key on purpose: a
-- per-row RI check would cost every insert; the only writer (storage/events.py) inserts event_meta rows
-- first and joins them, and event_meta rows are never deleted.
CREATE TABLE event_meta (
    meta_id    integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    unit       text NOT NULL,
    kind       text NOT NULL,
    profile_id text NOT NULL,
    service    text NOT NULL,
    UNIQUE (unit, kind, profile_id, service)
);

-- Events stored before this migration: every row gets the id of its combination (on TimescaleDB the
-- UPDATE decompresses compressed chunks; the compression policy compresses them again).
INSERT INTO event_meta (unit, kind, profile_id, service)
SELECT DISTINCT unit, kind, profile_id, service FROM events ORDER BY 1, 2, 3, 4;
ALTER TABLE events ADD COLUMN meta_id integer;
UPDATE events e SET meta_id = m.meta_id FROM event_meta m
WHERE (m.unit, m.kind, m.profile_id, m.service) = (e.unit, e.kind, e.profile_id, e.service);
ALTER TABLE events ALTER COLUMN meta_id SET NOT NULL;
ALTER TABLE events DROP COLUMN unit, DROP COLUMN kind, DROP COLUMN profile_id, DROP COLUMN service;
-- The UPDATE wrote every stored row and its key entries again: months packed before (0019) are packed
-- again by storage/retention_pack.py (plain PostgreSQL; the heap's dead space is reused by later rows).
DELETE FROM events_packed;

CREATE VIEW events_described AS
SELECT e.device_id, e.meter, e.ts, e.event_id, e.value, m.unit, m.kind, m.profile_id, m.service,
       e.received_at, e.reset_marker, e.text_value, e.ingested_at
FROM events e LEFT JOIN event_meta m ON m.meta_id = e.meta_id;

-- The id of a combination, created if new: for writers other than the batch insert (tests, benchmarks).
CREATE OR REPLACE FUNCTION event_meta_id(p_unit text, p_kind text, p_profile_id text, p_service text)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    id integer;
BEGIN
    SELECT meta_id INTO id FROM event_meta
    WHERE unit = p_unit AND kind = p_kind AND profile_id = p_profile_id AND service = p_service;
    IF id IS NULL THEN
        INSERT INTO event_meta (unit, kind, profile_id, service) VALUES (p_unit, p_kind, p_profile_id, p_service)
        ON CONFLICT DO NOTHING RETURNING meta_id INTO id;
    END IF;
    IF id IS NULL THEN  -- another transaction inserted it first and has committed since
        SELECT meta_id INTO id FROM event_meta
        WHERE unit = p_unit AND kind = p_kind AND profile_id = p_profile_id AND service = p_service;
    END IF;
    RETURN id;
END $$;
