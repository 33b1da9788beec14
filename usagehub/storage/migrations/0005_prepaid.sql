-- Prepaid (issue 5): append-only ledger with a DB-enforced overdraft, cards, reservations, events.

-- One row per prepaid account: the running balance the ledger trigger keeps, under a row lock.
-- balance = sum of the account's ledger entries (holds included); held = money in open reservations.
CREATE TABLE prepaid_accounts (
    account_id     text PRIMARY KEY REFERENCES accounts (account_id),
    currency       text NOT NULL,
    balance        numeric NOT NULL DEFAULT 0,
    held           numeric NOT NULL DEFAULT 0 CHECK (held >= 0),
    overdraft      numeric NOT NULL DEFAULT 0 CHECK (overdraft >= 0),
    low_threshold  numeric NOT NULL DEFAULT 0,
    arrears        numeric NOT NULL DEFAULT 0 CHECK (arrears >= 0),
    blocked        boolean NOT NULL DEFAULT false,
    blocked_at     timestamptz,
    debit_mode     text NOT NULL DEFAULT 'metered' CHECK (debit_mode IN ('metered', 'reservation')),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- An account flagged prepaid gets its balance row at once (so every path can lock it).
CREATE FUNCTION prepaid_account_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.prepaid THEN
        INSERT INTO prepaid_accounts (account_id, currency) VALUES (NEW.account_id, NEW.currency)
        ON CONFLICT (account_id) DO NOTHING;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER accounts_prepaid_row AFTER INSERT OR UPDATE OF prepaid ON accounts
    FOR EACH ROW EXECUTE FUNCTION prepaid_account_row();
INSERT INTO prepaid_accounts (account_id, currency)
    SELECT account_id, currency FROM accounts WHERE prepaid ON CONFLICT DO NOTHING;

CREATE TABLE ledger_entries (
    entry_id        bigserial PRIMARY KEY,
    account_id      text NOT NULL REFERENCES prepaid_accounts (account_id),
    kind            text NOT NULL CHECK (kind IN ('topup', 'usage', 'adjustment', 'refund', 'hold', 'release')),
    amount          numeric NOT NULL,          -- what the entry adds to the balance
    currency        text NOT NULL,
    vendor_id       text,
    payment_ref     text,
    card_id         text,
    reservation_id  text,
    device_id       text,
    product         text,
    quantity        numeric,
    created_at      timestamptz NOT NULL DEFAULT now(),
    balance_after   numeric NOT NULL DEFAULT 0,  -- set by the trigger under the account's row lock
    CONSTRAINT ledger_sign CHECK (
        (kind = 'topup' AND amount > 0) OR (kind = 'hold' AND amount < 0) OR (kind = 'release' AND amount > 0)
        OR (kind IN ('usage', 'adjustment', 'refund') AND amount <> 0))
);
CREATE INDEX ledger_account ON ledger_entries (account_id, entry_id);
CREATE INDEX ledger_topups ON ledger_entries (created_at) WHERE kind = 'topup';
-- Top-ups are idempotent on the payment reference.
CREATE UNIQUE INDEX ledger_payment_ref ON ledger_entries (payment_ref) WHERE kind = 'topup';

-- The overdraft rule lives here, not only in Python: each entry locks the account's row, and a
-- debit that would take the balance (holds included) below -overdraft is refused.
CREATE FUNCTION ledger_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    acc prepaid_accounts%ROWTYPE;
    after numeric;
BEGIN
    SELECT * INTO acc FROM prepaid_accounts WHERE account_id = NEW.account_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account % is not prepaid', NEW.account_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF NEW.currency <> acc.currency THEN
        RAISE EXCEPTION 'entry in % on an account kept in %', NEW.currency, acc.currency
            USING ERRCODE = 'check_violation';
    END IF;
    after := acc.balance + NEW.amount;
    IF NEW.amount < 0 AND after < -acc.overdraft THEN
        RAISE EXCEPTION 'INSUFFICIENT_BALANCE: % % would take account % to % (overdraft %)',
            NEW.kind, NEW.amount, NEW.account_id, after, acc.overdraft USING ERRCODE = 'check_violation';
    END IF;
    UPDATE prepaid_accounts SET balance = after,
        held = held - CASE WHEN NEW.kind IN ('hold', 'release') THEN NEW.amount ELSE 0 END,
        updated_at = now()
    WHERE account_id = NEW.account_id;
    NEW.balance_after := after;
    RETURN NEW;
END $$;
CREATE TRIGGER ledger_apply BEFORE INSERT ON ledger_entries FOR EACH ROW EXECUTE FUNCTION ledger_apply();

CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER ledger_no_update BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

CREATE OR REPLACE VIEW vendor_topups AS
    SELECT vendor_id, account_id, amount, currency, payment_ref, created_at AS at
    FROM ledger_entries WHERE kind = 'topup';

CREATE TABLE prepaid_cards (
    card_id         text PRIMARY KEY,
    account_id      text NOT NULL REFERENCES accounts (account_id),
    blacklisted     boolean NOT NULL DEFAULT false,
    reason          text,
    blacklisted_at  timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX prepaid_cards_account ON prepaid_cards (account_id);

-- Every refused card presentation (and its reason), for fraud review.
CREATE TABLE prepaid_card_attempts (
    attempt_id  bigserial PRIMARY KEY,
    card_id     text NOT NULL,
    account_id  text,
    operation   text NOT NULL,
    reason      text NOT NULL,
    device_id   text,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX prepaid_card_attempts_card ON prepaid_card_attempts (card_id, attempt_id);

CREATE TABLE prepaid_reservations (
    reservation_id  text PRIMARY KEY,
    account_id      text NOT NULL REFERENCES prepaid_accounts (account_id),
    device_id       text NOT NULL,
    card_id         text,
    request_id      text,
    product         text NOT NULL,
    units           numeric NOT NULL,
    hold            numeric NOT NULL CHECK (hold >= 0),
    state           text NOT NULL CHECK (state IN ('open', 'committed', 'released', 'expired')),
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    closed_at       timestamptz,
    used_units      numeric,
    charged         numeric
);
CREATE INDEX prepaid_reservations_open ON prepaid_reservations (expires_at) WHERE state = 'open';
CREATE INDEX prepaid_reservations_account ON prepaid_reservations (account_id, expires_at) WHERE state = 'open';
-- A device repeating a request (QoS 1 redelivery, retry) gets the same reservation.
CREATE UNIQUE INDEX prepaid_reservations_request ON prepaid_reservations (device_id, request_id)
    WHERE request_id IS NOT NULL;

-- Alerts and block/restore events; a NOTIFY at commit tells every hub process (subscriptions,
-- commands). commands_sent_at marks block/restore events whose device commands went out.
CREATE TABLE prepaid_events (
    event_id          bigserial PRIMARY KEY,
    account_id        text NOT NULL,
    kind              text NOT NULL CHECK (kind IN ('low_balance', 'blocked', 'restored')),
    balance           numeric NOT NULL,
    funds             numeric NOT NULL,
    currency          text NOT NULL,
    at                timestamptz NOT NULL DEFAULT now(),
    commands_sent_at  timestamptz,
    commands          integer
);
CREATE INDEX prepaid_events_account ON prepaid_events (account_id, event_id);
CREATE INDEX prepaid_events_unsent ON prepaid_events (event_id)
    WHERE commands_sent_at IS NULL AND kind IN ('blocked', 'restored');

CREATE FUNCTION prepaid_event_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('usagehub_prepaid', json_build_object(
        'id', NEW.event_id, 'account', NEW.account_id, 'kind', NEW.kind, 'balance', NEW.balance::text,
        'funds', NEW.funds::text, 'currency', NEW.currency, 'at', NEW.at)::text);
    RETURN NEW;
END $$;
CREATE TRIGGER prepaid_event_notify AFTER INSERT ON prepaid_events
    FOR EACH ROW EXECUTE FUNCTION prepaid_event_notify();
