-- Prepaid batches (issue 14, deliverable 5): the batch read looks bindings up per device.
-- prepaid_batch_read joined the batch's devices to every binding valid at p_at: the plan read all
-- current bindings through the bindings_no_overlap GiST index (an `= ANY(array)` cannot be a GiST
-- index condition) and hashed them, a cost that grew with the fleet, not the batch. Now a lookup per
-- device (LATERAL ... LIMIT 1, which the planner cannot flatten back into the hash join its generic
-- estimate of `valid @> $1` prefers) through a btree index carrying what the lookup needs (an
-- index-only scan, 1-6 us a device; a probe of the GiST index took 20-30 us, slower than the hash at
-- 400 bound devices: bench/prepaid.py, docs/prepaid.md). Same answers: a device
-- has at most one binding valid at p_at (the exclusion constraint), so LIMIT 1 drops nothing.
-- CREATE OR REPLACE resets the function's settings, so 0032's generic plans are set again.
CREATE INDEX bindings_device ON bindings (device_id) INCLUDE (account_id, valid);

CREATE OR REPLACE FUNCTION prepaid_batch_read(p_devices text[], p_at timestamptz, p_cards text[], p_req_devices text[],
                                   p_req_ids text[], p_reservations text[], p_expire text[])
RETURNS jsonb LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    out jsonb;
    locked jsonb;
    names text[];
BEGIN
    SELECT jsonb_build_object(
        'devices', coalesce((SELECT jsonb_agg(jsonb_build_array(d.device_id, b.account_id, d.tenant))
                             FROM devices d LEFT JOIN LATERAL (
                                 SELECT bd.account_id FROM bindings bd
                                 WHERE bd.device_id = d.device_id AND bd.valid @> p_at LIMIT 1) b ON true
                             WHERE d.device_id = ANY(p_devices)), '[]'),
        'cards', coalesce((SELECT jsonb_agg(jsonb_build_array(c.card_id, c.account_id, c.blacklisted, c.reason,
                                                              a.tenant))
                           FROM prepaid_cards c JOIN accounts a USING (account_id)
                           WHERE c.card_id = ANY(p_cards)), '[]'),
        'repeats', coalesce((SELECT jsonb_agg(jsonb_build_array(r.device_id, r.request_id, r.reservation_id,
                                                                r.account_id, r.units::text, r.hold::text,
                                                                pa.currency, r.expires_at))
                             FROM prepaid_reservations r JOIN prepaid_accounts pa USING (account_id)
                             WHERE (r.device_id, r.request_id) IN (SELECT * FROM unnest(p_req_devices, p_req_ids))),
                            '[]'))
    INTO out;
    SELECT coalesce(jsonb_agg(jsonb_build_array(s.account_id, s.currency, s.balance::text, s.held::text,
                                                s.overdraft::text, s.low_threshold::text, s.arrears::text,
                                                s.blocked, s.debit_mode, s.prepaid) ORDER BY s.account_id), '[]'),
           coalesce(array_agg(s.account_id), '{}')
    INTO locked, names
    FROM (SELECT pa.account_id, pa.currency, pa.balance, pa.held, pa.overdraft, pa.low_threshold, pa.arrears,
                 pa.blocked, pa.debit_mode, a.prepaid
          FROM prepaid_accounts pa JOIN accounts a USING (account_id)
          WHERE pa.account_id IN (
              SELECT b.account_id FROM unnest(p_devices) AS v(device_id) CROSS JOIN LATERAL (
                  SELECT bd.account_id FROM bindings bd
                  WHERE bd.device_id = v.device_id AND bd.valid @> p_at LIMIT 1) b
              UNION SELECT account_id FROM prepaid_cards WHERE card_id = ANY(p_cards)
              UNION SELECT account_id FROM prepaid_reservations WHERE reservation_id = ANY(p_reservations)
              UNION SELECT unnest(p_expire))
          ORDER BY pa.account_id FOR UPDATE OF pa) s;
    RETURN out || jsonb_build_object(
        'locked', locked,
        'reservations', coalesce((SELECT jsonb_agg(jsonb_build_array(r.reservation_id, r.account_id, r.device_id,
                                                                     r.product, r.units::text, r.hold::text, r.state,
                                                                     r.expires_at, r.used_units::text, r.charged::text))
                                  FROM (SELECT * FROM prepaid_reservations
                                        WHERE reservation_id = ANY(p_reservations) AND account_id = ANY(names)
                                        UNION
                                        SELECT * FROM prepaid_reservations
                                        WHERE account_id = ANY(names) AND state = 'open' AND expires_at <= p_at) r),
                                 '[]'),
        'generation', coalesce((SELECT generation FROM rating_generation), 0),
        'accounts', coalesce((SELECT jsonb_agg(jsonb_build_array(a.account_id, a.tenant, a.market, a.currency,
                                                                 a.timezone, coalesce((
                                     SELECT jsonb_agg(jsonb_build_array(p.product, p.plan_id))
                                     FROM account_plans p WHERE p.account_id = a.account_id), '[]')))
                              FROM accounts a WHERE a.account_id = ANY(names)), '[]'));
END $$;
