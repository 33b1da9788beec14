"""A headless Chromium driven over the DevTools protocol: open a page, type, click, read, take screenshots."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from tests.peers import free_port, require_binary


class Browser:
    """One Chromium process with one page; used as ``async with Browser(tmp_path) as b``."""

    def __init__(self, workdir: Path, *, width: int = 1200, height: int = 800, timezone: str | None = None) -> None:
        self.workdir, self.size, self.timezone = workdir, (width, height), timezone
        self.proc: asyncio.subprocess.Process | None = None
        self.ws: ClientConnection | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Browser:
        chromium = require_binary("chromium")
        port = free_port()
        self.proc = await asyncio.create_subprocess_exec(
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={self.workdir / 'chromium-profile'}",
            f"--remote-debugging-port={port}", f"--window-size={self.size[0]},{self.size[1]}", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        targets: list[dict[str, Any]] = []
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                try:
                    targets = (await client.get(f"http://127.0.0.1:{port}/json/list")).json()
                    if any(t["type"] == "page" for t in targets):
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        page = next(t for t in targets if t["type"] == "page")
        self.ws = await connect(page["webSocketDebuggerUrl"], max_size=None)
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        await self.send("Emulation.setDeviceMetricsOverride", width=self.size[0], height=self.size[1],
                        deviceScaleFactor=1, mobile=False)
        if self.timezone:  # the browser's own zone (a phone abroad), to show pages do not depend on it
            await self.send("Emulation.setTimezoneOverride", timezoneId=self.timezone)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 20)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events that arrive meanwhile are skipped)."""
        assert self.ws is not None
        ident = next(self._ids)
        await self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    async def open(self, url: str) -> None:
        """Navigate and wait for the load event."""
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'")

    async def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float = 30) -> Any:
        """Poll until the expression is truthy; its value."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            value = await self.eval(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {expression}")
            await asyncio.sleep(0.1)

    async def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element."""
        box = await self.wait_for(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                                  "if (!e) return null; e.scrollIntoView({block: 'center'}); "
                                  "const r = e.getBoundingClientRect(); "
                                  "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        await self.send("Input.dispatchMouseEvent", type="mouseMoved", x=box[0], y=box[1])
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    async def type(self, text: str) -> None:
        """Type text into the focused element, as a keyboard would insert it."""
        await self.send("Input.insertText", text=text)

    async def key(self, key: str, *, code: int, modifiers: int = 0, text: str = "") -> None:
        """Press and release one key (modifiers: 2 = Ctrl; ``text``: what it types, "\r" for Enter)."""
        params = {"key": key, "code": key if len(key) > 1 else f"Key{key.upper()}", "windowsVirtualKeyCode": code,
                  "modifiers": modifiers}
        down = {"type": "keyDown", "text": text} if text else {"type": "rawKeyDown"}
        await self.send("Input.dispatchKeyEvent", **down, **params)
        await self.send("Input.dispatchKeyEvent", type="keyUp", **params)

    async def screenshot(self, path: Path) -> bytes:
        """A PNG of the viewport, saved to ``path`` and returned."""
        data = base64.b64decode((await self.send("Page.captureScreenshot", format="png"))["data"])
        await asyncio.to_thread(path.write_bytes, data)
        return data


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the RGB rows of an 8-bit RGB/RGBA PNG (unfiltered), to assert on what was drawn."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        header = chunk if kind == b"IHDR" else header
        idat += chunk if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6)
    channels = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * channels
    prev, rows = bytearray(stride), []
    for y in range(height):
        line = raw[y * (stride + 1):(y + 1) * (stride + 1)]
        kind, cur = line[0], bytearray(line[1:])
        for x in range(stride):
            a = cur[x - channels] if x >= channels else 0
            b, c = prev[x], prev[x - channels] if x >= channels else 0
            if kind == 1:
                cur[x] = (cur[x] + a) & 255
            elif kind == 2:
                cur[x] = (cur[x] + b) & 255
            elif kind == 3:
                cur[x] = (cur[x] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                cur[x] = (cur[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(b"".join(bytes(cur[i:i + 3]) for i in range(0, stride, channels)))
        prev = cur
    return width, height, rows


def colours_in(rows: list[bytes], box: tuple[int, int, int, int]) -> set[bytes]:
    """Distinct RGB colours inside ``box`` = (x0, y0, x1, y1) of the decoded rows."""
    x0, y0, x1, y1 = box
    return {row[x * 3:x * 3 + 3] for row in rows[y0:y1] for x in range(x0, x1)}


def png_colours(data: bytes) -> set[bytes]:
    """Every distinct RGB colour of a PNG screenshot (enough to tell a drawn page from a blank one)."""
    width, height, rows = png_pixels(data)
    return colours_in(rows, (0, 0, width, height))
