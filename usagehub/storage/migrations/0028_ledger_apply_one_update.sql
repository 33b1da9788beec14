-- The ledger trigger with one statement per entry instead of two (issue 14, prepaid device side).
-- 0005's ledger_apply locked the account row (SELECT ... FOR UPDATE), then updated it. An UPDATE
-- takes the same row lock and returns the new balance: the checks then raise exactly as before
-- (the raise aborts the statement, so the update is undone with the refused entry).
CREATE OR REPLACE FUNCTION ledger_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    after numeric;
    floor numeric;
    kept_in text;
BEGIN
    UPDATE prepaid_accounts SET balance = balance + NEW.amount,
        held = held - CASE WHEN NEW.kind IN ('hold', 'release') THEN NEW.amount ELSE 0 END,
        updated_at = now()
    WHERE account_id = NEW.account_id
    RETURNING balance, -overdraft, currency INTO after, floor, kept_in;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account % is not prepaid', NEW.account_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF NEW.currency <> kept_in THEN
        RAISE EXCEPTION 'entry in % on an account kept in %', NEW.currency, kept_in
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.amount < 0 AND after < floor THEN
        RAISE EXCEPTION 'INSUFFICIENT_BALANCE: % % would take account % to % (overdraft %)',
            NEW.kind, NEW.amount, NEW.account_id, after, -floor USING ERRCODE = 'check_violation';
    END IF;
    NEW.balance_after := after;
    RETURN NEW;
END $$;

-- Everything a batch of authorize/commit/release needs before deciding, in one statement (one round
-- trip with the BEGIN): the devices and their bindings at p_at, the cards, the repeated request ids,
-- the lock of every account these may name (one statement, account order: no deadlocks between
-- hubs), then — under that lock, in a new snapshot — the reservations the batch names and the
-- expired open ones of the locked accounts, and what rating needs to price them (the accounts'
-- market, zone and plans, the catalogue generation). Numbers travel as text (exact decimals).
CREATE FUNCTION prepaid_batch_read(p_devices text[], p_at timestamptz, p_cards text[], p_req_devices text[],
                                   p_req_ids text[], p_reservations text[], p_expire text[])
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    out jsonb;
    locked jsonb;
    names text[];
BEGIN
    SELECT jsonb_build_object(
        'devices', coalesce((SELECT jsonb_agg(jsonb_build_array(d.device_id, b.account_id, d.tenant))
                             FROM devices d LEFT JOIN bindings b ON b.device_id = d.device_id AND b.valid @> p_at
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
              SELECT b.account_id FROM bindings b WHERE b.device_id = ANY(p_devices) AND b.valid @> p_at
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

-- What a decided batch writes, in one statement: its ledger entries in order (the ledger trigger
-- checks and applies each), the reservations it opened and those it closed, and the refused card
-- presentations. p_doc is JSON (numbers as text, exact): {"ledger": [[account, kind, amount, currency,
-- vendor, payment_ref, card, reservation, device, product, quantity]], "created": [[reservation,
-- account, device, card, request, product, units, hold, state, expires_at, used_units, charged]],
-- "changed": [[reservation, state, used_units, charged]], "attempts": [[card, account, reason, device]]}.
CREATE FUNCTION prepaid_batch_write(p_now timestamptz, p_doc jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger_entries (account_id, kind, amount, currency, vendor_id, payment_ref, card_id,
                                reservation_id, device_id, product, quantity)
    SELECT e->>0, e->>1, (e->>2)::numeric, e->>3, e->>4, e->>5, e->>6, e->>7, e->>8, e->>9, (e->>10)::numeric
    FROM jsonb_array_elements(p_doc->'ledger') WITH ORDINALITY AS x(e, n) ORDER BY n;
    INSERT INTO prepaid_reservations (reservation_id, account_id, device_id, card_id, request_id, product, units,
                                      hold, state, created_at, expires_at, closed_at, used_units, charged)
    SELECT e->>0, e->>1, e->>2, e->>3, e->>4, e->>5, (e->>6)::numeric, (e->>7)::numeric, e->>8, p_now,
           (e->>9)::timestamptz, CASE WHEN e->>8 = 'open' THEN NULL ELSE p_now END, (e->>10)::numeric,
           (e->>11)::numeric
    FROM jsonb_array_elements(p_doc->'created') AS x(e);
    UPDATE prepaid_reservations r SET state = e->>1, closed_at = p_now, used_units = (e->>2)::numeric,
                                      charged = (e->>3)::numeric
    FROM jsonb_array_elements(p_doc->'changed') AS x(e) WHERE r.reservation_id = e->>0;
    INSERT INTO prepaid_card_attempts (card_id, account_id, operation, reason, device_id)
    SELECT e->>0, e->>1, 'authorize', e->>2, e->>3 FROM jsonb_array_elements(p_doc->'attempts') AS x(e);
END $$;
