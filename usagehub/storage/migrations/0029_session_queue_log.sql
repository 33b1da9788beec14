-- The session queue becomes a log (issue 14: ingest no longer waits for session rounds).
--
-- Ingest used to take the accounts' advisory locks before queueing, because a queued row was keyed by
-- (account, service, instant) and inserted ON CONFLICT DO NOTHING: a row claimed by a replay whose points
-- it could not see would have absorbed the new row and been deleted with it. Each queued row now has its
-- own id; ingest appends rows without a lock, and a replay deletes exactly the rows it claimed (by id).
-- A row committed after the claim is not among them, so its points are replayed by a later round.
ALTER TABLE session_queue DROP CONSTRAINT session_queue_pkey;
ALTER TABLE session_queue ADD COLUMN queue_id bigint GENERATED ALWAYS AS IDENTITY;
ALTER TABLE session_queue ADD PRIMARY KEY (queue_id);
CREATE INDEX session_queue_segment ON session_queue (account_id, service, seg_start);
