"""Device keys are per tenant: no tenant stores a key (or a DLMS ``<device>:auth`` key) for another's device."""

from __future__ import annotations

import pytest
from psycopg_pool import AsyncConnectionPool

from usagehub.core.codecs.keyring import KeyRing, KeySealer
from usagehub.storage.device_keys import DeviceKeys
from usagehub.storage.registry import Registry


async def test_a_tenant_cannot_plant_keys_on_another_tenants_device(pool: AsyncConnectionPool) -> None:
    await Registry(pool).upsert_device(device_id="meter-a", tenant="A", profile_id="dlms-poll-meter")
    keys = DeviceKeys(pool, KeySealer("a test secret of enough length"))
    await keys.put(tenant="A", device_id="meter-a", protocol="dlms_poll", key=bytes(16))
    for planted in ("meter-a:auth", "METER-A", "meter-a"):  # the missing auth key, a case variant, the key itself
        with pytest.raises(PermissionError):
            await keys.put(tenant="B", device_id=planted, protocol="dlms_poll", key=bytes(range(16)))
    await keys.put(tenant="A", device_id="meter-a:auth", protocol="dlms_poll", key=bytes(range(16)))
    await keys.put(tenant="B", device_id="4C475A6774206295", protocol="dlms_push", key=bytes(16))  # unregistered
    ring = KeyRing()
    assert await keys.load_into(ring) == 3
    assert ring.lookup_for("dlms_poll")("meter-a:auth") == bytes(range(16))
    assert await keys.devices(tenant="B") == [("4C475A6774206295", "dlms_push")]
