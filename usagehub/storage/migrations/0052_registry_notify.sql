-- Registry changes are heard (issue 14): each commit that changes devices or gateway_devices notifies
-- usagehub_registry, and the pipelines' device-facts caches drop their entries then
-- (pipeline.identity.DeviceFactsCache). The caches kept each entry 3 seconds, so a change counted within
-- that and every device sending less often cost a registry lookup per message; now entries live until a
-- change (the 3 seconds only while a cache's listener is not connected). Notifications of one transaction
-- on one channel with one payload are delivered once, at its commit.

CREATE OR REPLACE FUNCTION registry_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('usagehub_registry', '');
    RETURN NULL;
END $$;

CREATE TRIGGER devices_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION registry_changed();
CREATE TRIGGER gateway_devices_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON gateway_devices
    FOR EACH STATEMENT EXECUTE FUNCTION registry_changed();
