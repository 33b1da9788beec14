-- Prepaid batches (issue 14): the batch functions' statements keep one generic plan per connection.
-- Every call names different devices, cards and reservations, so plpgsql re-planned its statements
-- (custom plans) on many calls: about as much server time as running them (pg_stat_statements,
-- bench/prepaid.py). Their plans do not depend on the values: index lookups by key.
ALTER FUNCTION prepaid_batch_read(text[], timestamptz, text[], text[], text[], text[], text[])
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION prepaid_batch_write(timestamptz, jsonb) SET plan_cache_mode = force_generic_plan;
