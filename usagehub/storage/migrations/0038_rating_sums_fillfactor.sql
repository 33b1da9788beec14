-- rating_sums is upserted by every session-point COPY (the rollup trigger of 0006/0037: one row per account,
-- start hour, product, mid hour, end hour), and a 15-minute meter's hour row is updated by three later batches.
-- Its only index is the primary key and an update changes no key column, so an update can be HOT (no new
-- index entry) when the row's page has room: leave 30 % of each page free for that (issue 14). Rows, sums and
-- readers are unchanged; pages filled before this keep their layout until rewritten.
ALTER TABLE rating_sums SET (fillfactor = 70);
