-- Prepaid batches (issue 14, deliverable 5): one account UPDATE per account and statement instead of one per
-- ledger entry, and one binding lookup per device in the batch read instead of two.
--
-- 0028's row trigger updated prepaid_accounts once per entry (a new row version, and a foreign-key check of
-- accounts each time, since the row was last written by this transaction): about half of a batch's ledger
-- insert. Now a writer that knows the locked balance (the batch write, storage.ledger.append) supplies each
-- entry's balance_after (the running balance, in entry order); an AFTER STATEMENT trigger applies the
-- statement's entries to each account in one UPDATE (which takes the row lock and reads the latest balance)
-- and refuses the whole statement, exactly as the row trigger did, when an entry's balance_after is not the
-- running balance from there, when a negative entry takes it below -overdraft (INSUFFICIENT_BALANCE), when
-- the currency differs or the account is not prepaid. balance stays the ledger sum, whatever the writer sent.
-- An insert without balance_after (an operator's or a test's) is applied by the row trigger, entry by
-- entry, as before; the row trigger marks it (per_entry), so the statement trigger leaves it alone, and
-- refuses an entry that claims the mark itself.
ALTER TABLE ledger_entries ALTER COLUMN balance_after DROP DEFAULT,
    ADD COLUMN per_entry boolean NOT NULL DEFAULT false;

CREATE OR REPLACE FUNCTION ledger_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    after numeric;
    floor numeric;
    kept_in text;
BEGIN
    IF NEW.balance_after IS NOT NULL THEN
        RAISE EXCEPTION 'per_entry is set by the ledger trigger, not by a writer' USING ERRCODE = 'check_violation';
    END IF;
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
    NEW.per_entry := true;
    RETURN NEW;
END $$;

DROP TRIGGER ledger_apply ON ledger_entries;
CREATE TRIGGER ledger_apply BEFORE INSERT ON ledger_entries FOR EACH ROW
    WHEN (NEW.balance_after IS NULL OR NEW.per_entry) EXECUTE FUNCTION ledger_apply();

CREATE FUNCTION ledger_apply_statement() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    WITH d AS (SELECT account_id, sum(amount) AS delta,
                      coalesce(sum(amount) FILTER (WHERE kind IN ('hold', 'release')), 0) AS held_delta
               FROM added WHERE NOT per_entry GROUP BY account_id),
         u AS (UPDATE prepaid_accounts pa SET balance = pa.balance + d.delta, held = pa.held - d.held_delta,
                                              updated_at = now()
               FROM d WHERE pa.account_id = d.account_id
               RETURNING pa.account_id, pa.balance - d.delta AS start, -pa.overdraft AS floor, pa.currency)
    SELECT e.entry_id, e.account_id, e.kind, e.amount, e.currency, e.balance_after, u.start + e.run AS running,
           u.floor, u.currency AS kept_in, u.account_id IS NULL AS unknown
    INTO bad
    FROM (SELECT a.*, sum(a.amount) OVER (PARTITION BY a.account_id ORDER BY a.entry_id) AS run
          FROM added a WHERE NOT a.per_entry) e
    LEFT JOIN u ON u.account_id = e.account_id
    WHERE u.account_id IS NULL OR e.currency <> u.currency OR e.balance_after <> u.start + e.run
       OR (e.amount < 0 AND u.start + e.run < u.floor)
    ORDER BY e.entry_id LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    ELSIF bad.unknown THEN
        RAISE EXCEPTION 'account % is not prepaid', bad.account_id USING ERRCODE = 'foreign_key_violation';
    ELSIF bad.currency <> bad.kept_in THEN
        RAISE EXCEPTION 'entry in % on an account kept in %', bad.currency, bad.kept_in
            USING ERRCODE = 'check_violation';
    ELSIF bad.amount < 0 AND bad.running < bad.floor THEN
        RAISE EXCEPTION 'INSUFFICIENT_BALANCE: % % would take account % to % (overdraft %)',
            bad.kind, bad.amount, bad.account_id, bad.running, -bad.floor USING ERRCODE = 'check_violation';
    END IF;
    RAISE EXCEPTION 'entry % of account % says balance_after %, the running balance is %', bad.entry_id,
        bad.account_id, bad.balance_after, bad.running USING ERRCODE = 'check_violation';
END $$;

CREATE TRIGGER ledger_apply_statement AFTER INSERT ON ledger_entries REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_apply_statement();

-- The batch write supplies balance_after: the locked balance (the batch read holds the lock) plus the
-- running sum of the batch's entries of that account, in entry order.
CREATE OR REPLACE FUNCTION prepaid_batch_write(p_now timestamptz, p_doc jsonb) RETURNS void LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    INSERT INTO ledger_entries (account_id, kind, amount, currency, vendor_id, payment_ref, card_id,
                                reservation_id, device_id, product, quantity, balance_after)
    SELECT x.e->>0, x.e->>1, (x.e->>2)::numeric, x.e->>3, x.e->>4, x.e->>5, x.e->>6, x.e->>7, x.e->>8, x.e->>9,
           (x.e->>10)::numeric,
           pa.balance + sum((x.e->>2)::numeric) OVER (PARTITION BY x.e->>0 ORDER BY x.n)
    FROM jsonb_array_elements(p_doc->'ledger') WITH ORDINALITY AS x(e, n)
    LEFT JOIN prepaid_accounts pa ON pa.account_id = x.e->>0
    ORDER BY x.n;
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

-- The batch read: the lock takes its accounts from the device lookup's result (0033 looked every device's
-- binding up a second time for the lock). Both now come from one statement's snapshot.
CREATE OR REPLACE FUNCTION prepaid_batch_read(p_devices text[], p_at timestamptz, p_cards text[], p_req_devices text[],
                                   p_req_ids text[], p_reservations text[], p_expire text[])
RETURNS jsonb LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    out jsonb;
    devs jsonb;
    bound text[];
    locked jsonb;
    names text[];
BEGIN
    SELECT coalesce(jsonb_agg(jsonb_build_array(d.device_id, b.account_id, d.tenant)), '[]'),
           coalesce(array_agg(b.account_id) FILTER (WHERE b.account_id IS NOT NULL), '{}')
    INTO devs, bound
    FROM devices d LEFT JOIN LATERAL (
        SELECT bd.account_id FROM bindings bd
        WHERE bd.device_id = d.device_id AND bd.valid @> p_at LIMIT 1) b ON true
    WHERE d.device_id = ANY(p_devices);
    SELECT jsonb_build_object(
        'devices', devs,
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
              SELECT unnest(bound)
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
