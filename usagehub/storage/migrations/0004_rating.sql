-- Rating (issue 4): price plans, plan assignment, VAT tables, vendors, settlement statements.
-- Definitions are append-only revisions: a change adds a revision, nothing is edited in place,
-- so what priced an invoice can always be read back.

-- One row per revision of a plan; the latest revision of (tenant, plan_id) is in force
-- (unless it retires the plan). definition is the validated core PricePlan as JSON.
CREATE TABLE price_plans (
    tenant        text NOT NULL DEFAULT 'default',
    plan_id       text NOT NULL,
    revision      integer NOT NULL CHECK (revision > 0),
    product       text NOT NULL,
    market        text NOT NULL,
    currency      text NOT NULL,
    unit          text NOT NULL,
    vat_category  text NOT NULL,
    retired       boolean NOT NULL DEFAULT false,
    definition    jsonb NOT NULL,
    digest        text NOT NULL,
    source        text NOT NULL DEFAULT '',
    loaded_by     text,
    loaded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, plan_id, revision)
);
CREATE INDEX price_plans_product ON price_plans (tenant, product, market);

-- The dated versions of each plan revision: find the plan in force for a product, market and date.
CREATE TABLE price_plan_versions (
    tenant        text NOT NULL,
    plan_id       text NOT NULL,
    revision      integer NOT NULL,
    valid_from    date NOT NULL,
    valid_to      date,
    components    jsonb NOT NULL,
    PRIMARY KEY (tenant, plan_id, revision, valid_from),
    FOREIGN KEY (tenant, plan_id, revision) REFERENCES price_plans (tenant, plan_id, revision)
);

CREATE VIEW current_price_plans AS
    SELECT DISTINCT ON (tenant, plan_id) * FROM price_plans ORDER BY tenant, plan_id, revision DESC;

-- Holiday calendars named by time-of-use plans; the latest revision of a name is in force.
CREATE TABLE holiday_calendars (
    tenant     text NOT NULL DEFAULT 'default',
    name       text NOT NULL,
    revision   integer NOT NULL CHECK (revision > 0),
    days       date[] NOT NULL,
    loaded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, name, revision)
);

-- An account's chosen plan per product (core Account.plan_ids); without one, the single
-- plan of the product in the account's market applies. A chosen product is subscribed:
-- its standing charge applies even in a period without usage.
CREATE TABLE account_plans (
    account_id   text NOT NULL REFERENCES accounts (account_id),
    product      text NOT NULL,
    plan_id      text NOT NULL,
    assigned_by  text,
    assigned_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, product)
);

-- VAT tables: each load is a revision (the whole validated document, with its source file
-- and digest); the latest is in force. vat_rates repeats its rates for SQL readers.
CREATE TABLE vat_tables (
    revision   bigserial PRIMARY KEY,
    source     text NOT NULL,
    digest     text NOT NULL,
    document   jsonb NOT NULL,
    loaded_by  text,
    loaded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE vat_rates (
    revision    bigint NOT NULL REFERENCES vat_tables (revision),
    market      text NOT NULL,
    category    text NOT NULL,
    rate        numeric NOT NULL,
    valid_from  date NOT NULL,
    valid_to    date,
    rounding    text NOT NULL,
    source      text NOT NULL,
    PRIMARY KEY (revision, market, category, valid_from)
);

-- Vendors with their share rules (core Vendor as JSON), as revisions.
CREATE TABLE vendors (
    tenant      text NOT NULL DEFAULT 'default',
    vendor_id   text NOT NULL,
    revision    integer NOT NULL CHECK (revision > 0),
    kind        text NOT NULL,
    currency    text NOT NULL,
    definition  jsonb NOT NULL,
    digest      text NOT NULL,
    loaded_by   text,
    loaded_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, vendor_id, revision)
);

-- Settlement statements, kept by content digest: a re-run over the same transactions finds
-- its statement again; a different digest for the same vendor and period is a new statement
-- to compare with the earlier one. Every run is logged.
CREATE TABLE settlement_statements (
    statement_id     bigserial PRIMARY KEY,
    tenant           text NOT NULL DEFAULT 'default',
    vendor_id        text NOT NULL,
    vendor_revision  integer NOT NULL,
    period_label     text NOT NULL,
    period_start     timestamptz NOT NULL,
    period_end       timestamptz NOT NULL,
    currency         text NOT NULL,
    total            numeric NOT NULL,
    digest           text NOT NULL,
    document         jsonb NOT NULL,
    created_by       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, vendor_id, period_label, digest)
);
CREATE TABLE settlement_runs (
    run_id        bigserial PRIMARY KEY,
    statement_id  bigint NOT NULL REFERENCES settlement_statements (statement_id),
    run_by        text,
    run_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX settlement_runs_statement ON settlement_runs (statement_id);

-- Bumped with every plan, calendar, VAT or vendor change: services cache the catalogue per value.
CREATE TABLE rating_generation (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    generation  bigint NOT NULL
);
INSERT INTO rating_generation (id, generation) VALUES (true, 0);

-- Definitions are history: the database refuses to edit or delete a revision.
CREATE OR REPLACE FUNCTION rating_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are append-only: add a revision instead', TG_TABLE_NAME
        USING ERRCODE = 'check_violation';
END $$;
CREATE TRIGGER price_plans_append_only BEFORE UPDATE OR DELETE ON price_plans
    FOR EACH ROW EXECUTE FUNCTION rating_append_only();
CREATE TRIGGER price_plan_versions_append_only BEFORE UPDATE OR DELETE ON price_plan_versions
    FOR EACH ROW EXECUTE FUNCTION rating_append_only();
CREATE TRIGGER vat_tables_append_only BEFORE UPDATE OR DELETE ON vat_tables
    FOR EACH ROW EXECUTE FUNCTION rating_append_only();
CREATE TRIGGER vendors_append_only BEFORE UPDATE OR DELETE ON vendors
    FOR EACH ROW EXECUTE FUNCTION rating_append_only();
CREATE TRIGGER settlement_statements_append_only BEFORE UPDATE OR DELETE ON settlement_statements
    FOR EACH ROW EXECUTE FUNCTION rating_append_only();

-- Top-ups processed by vendors, read by settlement. A typed, empty placeholder here; the
-- prepaid migration (0005) replaces it over its ledger with identical columns.
CREATE VIEW vendor_topups AS
    SELECT NULL::text AS vendor_id, NULL::text AS account_id, NULL::numeric AS amount,
           NULL::text AS currency, NULL::text AS payment_ref, NULL::timestamptz AS at
    WHERE false;
