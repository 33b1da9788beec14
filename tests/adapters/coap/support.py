"""Helpers for CoAP tests: test devices and profiles, starting/stopping an adapter on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiocoap

from tests.adapters.files.minipipe import MiniPipeline, load_profiles
from tests.fakes import StaticDirectory
from tests.peers import free_port
from usagehub.adapters.base import AdapterSettings, DeviceEndpoint, Sink
from usagehub.adapters.coap import FACTORY, CoapConfig
from usagehub.adapters.coap.adapter import CoapAdapter
from usagehub.core.profiles import Profile, parse_profile

SECRET = "0102030405060708090a0b0c0d0e0f10"

BATCH_PROFILE = """
id: test-coap-batch
match: {transport: coap, topic: "b/{device_id}"}
decode: {type: cbor}
records: "$.r"
event_id: "$.seq"
timestamp: {path: "$.ts", format: epoch_s}
meters:
  energy: {value: "$.e", kind: delta, unit: Wh, aggregation: sum}
"""


def devices() -> StaticDirectory:
    """dev1/dev2 with OSCORE keys; open1 registered without keys."""
    return StaticDirectory([
        DeviceEndpoint(device_id="dev1", profile_id="acme-coap-meter",
                       secrets={"oscore_master_secret": SECRET, "oscore_sender_id": "01"}),
        DeviceEndpoint(device_id="dev2", profile_id="acme-coap-meter",
                       secrets={"oscore_master_secret": SECRET[::-1], "oscore_sender_id": "02"}),
        DeviceEndpoint(device_id="open1", profile_id="acme-coap-open"),
        DeviceEndpoint(device_id="noprofile", profile_id=None),  # registered, but for no profile
        # The registered profile decides decoding: a batch device is registered under the batch profile.
        DeviceEndpoint(device_id="bat1", profile_id="test-coap-batch",
                       secrets={"oscore_master_secret": SECRET, "oscore_sender_id": "03"}),
    ])


def profiles() -> list[Profile]:
    """The shipped CoAP profiles plus a batch profile."""
    return [*load_profiles("acme-coap-meter", "acme-coap-open"),
            parse_profile(BATCH_PROFILE, "test-coap-batch.yaml")]


@dataclass
class Hub:
    """A running adapter and where it listens."""

    adapter: CoapAdapter
    port: int
    pipeline: MiniPipeline

    def uri(self, path: str) -> str:
        return f"coap://127.0.0.1:{self.port}/{path}"


async def start(tmp: Path, sink: Sink, **config: Any) -> tuple[CoapAdapter, asyncio.Task[None], int]:
    """Enter a CoAP adapter on a free loopback port and run it with ``sink``."""
    port = free_port(socket.SOCK_DGRAM)
    cfg = CoapConfig.model_validate({"host": "127.0.0.1", "port": port, **config})
    settings = AdapterSettings(profiles=profiles(), devices=devices(), data_dir=tmp)
    adapter = FACTORY.create(cfg, settings)
    assert isinstance(adapter, CoapAdapter)
    await adapter.__aenter__()
    task = asyncio.create_task(adapter.run(sink), name="coap-test")
    return adapter, task, port


async def stop(adapter: CoapAdapter, task: asyncio.Task[None]) -> None:
    """Cancel ``run`` and exit the adapter."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await adapter.__aexit__(None, None, None)


def client_context_dir(tmp: Path, name: str, secret: str, sender_id: str, recipient_id: str = "") -> Path:
    """An aiocoap OSCORE client context folder (the device's view of the keys)."""
    folder = tmp / f"client-{name}"
    folder.mkdir()
    (folder / "settings.json").write_text(json.dumps(
        {"sender-id_hex": sender_id, "recipient-id_hex": recipient_id, "secret_hex": secret}))
    return folder


Installer = Callable[..., aiocoap.Context]
