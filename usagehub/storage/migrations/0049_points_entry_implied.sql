-- A usage point that is its whole entry (one account, one period: the common case) leaves entry_ts and
-- entry_quantity NULL: they are its end_ts and value (storage.sessions.copy_points). Each such point cost a
-- second binary numeric to dump (0.6 us of Python) and to store, for every reading (issue 14). Points of a
-- split entry carry both, as before; points stored before this migration keep theirs. Readers take
-- coalesce(entry_ts, end_ts) and coalesce(entry_quantity, value).
COMMENT ON COLUMN session_points.entry_ts IS 'the entry''s device time; NULL: end_ts (the point is its whole entry)';
COMMENT ON COLUMN session_points.entry_quantity IS 'the entry''s quantity; NULL: value (the point is its whole entry)';

CREATE OR REPLACE VIEW usage_entries AS
SELECT p.device_id, split_part(p.entry_ref, E'\x1f', 2) AS meter, coalesce(p.entry_ts, p.end_ts) AS ts,
       sum(p.value) AS quantity, p.entry_unit AS unit, p.service, split_part(p.entry_ref, E'\x1f', 1) AS entry_kind,
       substring(p.entry_ref FROM '^[^\x1f]*\x1f[^\x1f]*\x1f(.*)$') AS cause_event_id,
       NULL::text AS reason, NULL::text AS author
FROM session_points p
WHERE p.entry_ref IS NOT NULL AND p.entry_ref NOT LIKE 'correction' || E'\x1f' || '%'
GROUP BY p.device_id, p.entry_ref, p.entry_since, coalesce(p.entry_ts, p.end_ts), p.entry_unit, p.service
UNION ALL
SELECT device_id, meter, ts, quantity, unit, service, 'correction', correction_id, reason, author
FROM usage_corrections;
