-- Prepaid batches (issue 14, deliverable 5, p24): the batch functions' generic plans look keys up by index,
-- whatever the tables held when a connection made them.
--
-- 0032 keeps one generic plan per connection and statement (re-planning cost as much as running). A plan is
-- made at a connection's first calls: on a young database prepaid_reservations is nearly empty, a
-- sequential scan is the cheapest way to find `reservation_id = ANY(...)` or a request id in it, and the
-- connection keeps that plan while the table grows (the pool keeps connections for an hour). Measured
-- (bench/prepaid.py service-rating, pg_stat_statements): the batch read went from 1.55 ms per call in a run
-- of 3,000 authorizations to 5.8 ms in a run of 40,000, two of its statements scanning every reservation
-- for none. With sequential scans off in these two functions the planner takes the key indexes it has
-- (tables without one, like rating_generation, are still scanned), so the cost per batch stays flat.
ALTER FUNCTION prepaid_batch_read(text[], timestamptz, text[], text[], text[], text[], text[])
    SET enable_seqscan = off;
ALTER FUNCTION prepaid_batch_write(timestamptz, jsonb) SET enable_seqscan = off;
