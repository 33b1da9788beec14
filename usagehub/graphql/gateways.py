"""Which devices a gateway may report for: the gateway→device relation of the registry."""

from __future__ import annotations

from typing import Any

import strawberry
from strawberry.types import Info

from usagehub.graphql.auth import MANAGE_REGISTRY, READ_ALL, api_error, domain_errors, require

MAX_IDS = 1000


def _registry(info: Info) -> Any:
    return info.context.services.registry


def _ids(device_ids: list[str]) -> list[str]:
    if not device_ids or len(device_ids) > MAX_IDS:
        raise api_error("BAD_REQUEST", f"give 1 to {MAX_IDS} device ids")
    return device_ids


@strawberry.type
class GatewayQuery:
    """Read the gateway relation of the caller's tenant."""

    @strawberry.field(description="Devices registered behind a gateway of your tenant (empty otherwise).")
    async def gateway_devices(self, info: Info, gateway_id: str) -> list[str]:
        tenant = require(info, *READ_ALL)
        result: list[str] = await _registry(info).gateway_devices(gateway_id, tenant=tenant)
        return result


@strawberry.type
class GatewayMutation:
    """Change which devices a gateway's credential may write."""

    @strawberry.mutation(description="Register devices behind a gateway: its credential may then report "
                                     "their readings. Gateway and devices must be of your tenant.")
    async def register_gateway_devices(self, info: Info, gateway_id: str, device_ids: list[str]) -> list[str]:
        tenant = require(info, *MANAGE_REGISTRY)
        with domain_errors():
            result: list[str] = await _registry(info).attach_to_gateway(
                gateway_id=gateway_id, device_ids=_ids(device_ids), tenant=tenant)
        return result

    @strawberry.mutation(description="Remove devices from behind a gateway; returns those removed.")
    async def remove_gateway_devices(self, info: Info, gateway_id: str, device_ids: list[str]) -> list[str]:
        tenant = require(info, *MANAGE_REGISTRY)
        with domain_errors():
            result: list[str] = await _registry(info).detach_from_gateway(
                gateway_id=gateway_id, device_ids=_ids(device_ids), tenant=tenant)
        return result


QUERIES: tuple[type, ...] = (GatewayQuery,)
MUTATIONS: tuple[type, ...] = (GatewayMutation,)
SUBSCRIPTIONS: tuple[type, ...] = ()
