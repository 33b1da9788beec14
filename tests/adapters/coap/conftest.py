"""Fixtures for CoAP adapter tests: a running CoapAdapter on loopback with a MiniPipeline."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiocoap
import pytest
from aiocoap import oscore

from tests.adapters.coap.support import SECRET, Hub, Installer, client_context_dir, profiles, start, stop
from tests.adapters.files.minipipe import MiniPipeline


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    pipeline = MiniPipeline(profiles())
    adapter, task, port = await start(tmp_path, pipeline, max_body_bytes=4096)
    yield Hub(adapter, port, pipeline)
    await stop(adapter, task)


@pytest.fixture
async def client() -> AsyncIterator[aiocoap.Context]:
    ctx = await aiocoap.Context.create_client_context(transports=["oscore", "udp6"])
    yield ctx
    await ctx.shutdown()


@pytest.fixture
def oscore_client(tmp_path: Path, client: aiocoap.Context) -> Installer:
    """Install an OSCORE context for coap://127.0.0.1:port/* on the client; returns the client."""

    def install(port: int, name: str = "dev1", secret: str = SECRET,
                sender_id: str = "01") -> aiocoap.Context:
        ctx = oscore.FilesystemSecurityContext(str(client_context_dir(tmp_path, name, secret, sender_id)))
        client.client_credentials[f"coap://127.0.0.1:{port}/*"] = ctx
        return client

    return install
