-- Kept per-period partials (storage.period_truth, issue 14): reconciling a touched (account, period) reads
-- this row instead of every session of the period. partials: product -> the merge of the period's session
-- partials (core.billing.kept_partial). A period without a row is built from its sessions when first read.
CREATE TABLE period_truth (
    account_id    text NOT NULL,
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    period_label  text NOT NULL,
    partials      jsonb NOT NULL,
    PRIMARY KEY (account_id, period_start)
);
