"""The first hour, as a person lives it: ``usagehub demo``, then GraphiQL and the analytics page in Chromium."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from tests.integration.browser import Browser, colours_in, png_pixels
from tests.integration.hubproc import ROOT
from tests.peers import free_port, require_binary

pytestmark = pytest.mark.integration


class Demo:
    """A running ``usagehub demo`` and what its banner printed."""

    def __init__(self, proc: subprocess.Popen[str], banner: str, out: Path) -> None:
        self.proc, self.banner, self.out = proc, banner, out
        self.graphiql = re.search(r"GraphiQL:\s+(\S+)", banner).group(1)  # type: ignore[union-attr]
        self.analytics = re.search(r"analytics:\s+(\S+)", banner).group(1)  # type: ignore[union-attr]
        self.key = re.search(r"API key:\s+(\S+)", banner).group(1)  # type: ignore[union-attr]
        self.base = self.graphiql.split("/graphql")[0]
        self.queries = re.findall(r"^    (\{.*\})$", banner, re.MULTILINE)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """A small demo (4 households, 40 days of history) on free ports and its own data folder."""
    tmp = tmp_path_factory.mktemp("demo")
    out = tmp / "demo.out"
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp)}
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "usagehub", "demo", "--meters", "4", "--panels", "1", "--history-days", "40",
             "--rate", "5", "--data-dir", str(tmp / "data"), "--http-port", str(free_port()),
             "--embedded-broker-port", str(free_port())],
            stdout=sink, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
    deadline = time.monotonic() + 240
    while "Ctrl-C stops." not in out.read_text():
        assert proc.poll() is None, out.read_text()[-3000:]
        assert time.monotonic() < deadline, out.read_text()[-3000:]
        time.sleep(0.2)
    banner = out.read_text()
    yield Demo(proc, banner, out)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0, out.read_text()[-3000:]


def test_demo_banner_and_its_example_queries_answer_something(demo: Demo) -> None:
    assert re.search(r"history:\s+[1-9]\d* messages", demo.banner)
    assert "15 price plans" in demo.banner and "sim-acct-0003" in demo.banner
    assert demo.banner.count("quarantined (kept with the reason") == 3
    assert "#key=" in demo.graphiql and len(demo.queries) == 3
    answers = [httpx.post(f"{demo.base}/graphql", json={"query": q}, timeout=30,
                          headers={"authorization": f"Bearer {demo.key}"}).json() for q in demo.queries]
    assert all("errors" not in a for a in answers), answers
    invoice, series, more = (a["data"] for a in answers)
    assert Decimal(invoice["invoicePreview"]["gross"]["amount"]) > 0
    assert {ln["product"] for ln in invoice["invoicePreview"]["lines"]} >= {"energy", "power"}
    assert sum(Decimal(w["quantity"]) for w in series["consumptionSeries"]) > 0
    assert len(more["quarantine"]["edges"]) == 3 and more["segments"][0]["name"] == "evening-heavy"
    csv_export = httpx.get(re.search(r"exports:\s+(\S+)", demo.banner).group(1),  # type: ignore[union-attr]
                           headers={"authorization": f"Bearer {demo.key}"}, timeout=30)
    assert csv_export.status_code == 200 and "standing_charge" in csv_export.text
    assert httpx.get(f"{demo.base}/exports/invoices/sim-acct-0001/2026-10.csv", timeout=30).status_code == 401


def _near(colours: set[bytes], rgb: tuple[int, int, int], tolerance: int = 40) -> bool:
    return any(all(abs(c[i] - rgb[i]) <= tolerance for i in range(3)) for c in colours)


async def test_graphiql_opens_without_a_key_and_runs_a_typed_query_with_it(demo: Demo, tmp_path: Path) -> None:
    require_binary("chromium")
    async with Browser(tmp_path) as browser:
        await browser.open(demo.base + "/graphql")  # no key anywhere: what a person gets from a bookmark
        await browser.wait_for("!!document.querySelector('.graphiql-container .CodeMirror')")
        assert "no key" in await browser.eval("document.getElementById('keystate').innerText")
        _, _, rows = png_pixels(await browser.screenshot(tmp_path / "graphiql-no-key.png"))
        bar = colours_in(rows, (0, 0, 1200, 40))
        assert _near(bar, (0xB9, 0x1C, 0x1C)), "the key bar does not show the red 'no key' state"
        assert len(colours_in(rows, (0, 40, 1200, 800))) > 20  # the editor is drawn, not a blank page

        await browser.click("#apikey")
        await browser.type(demo.key)
        await browser.key("Enter", code=13)
        await browser.wait_for("document.getElementById('keystate').innerText === 'key set'")
        await browser.wait_for("!!document.querySelector('.graphiql-query-editor .CodeMirror')")
        await browser.click(".graphiql-query-editor .CodeMirror-lines")
        await browser.key("a", code=65, modifiers=2)  # Ctrl+A: replace the sample text
        await browser.type("{ ingestStats { messages quarantined } }")
        await browser.click(".graphiql-execute-button")
        text = await browser.wait_for(
            "(() => { const r = document.querySelector('.graphiql-response'); "
            "return r && r.innerText.includes('quarantined') ? r.innerText : null; })()")
        assert re.search(r'"quarantined":\s*3', text), text
        assert re.search(r'"messages":\s*[1-9]', text), text
        _, _, rows = png_pixels(await browser.screenshot(tmp_path / "graphiql-answer.png"))
        assert _near(colours_in(rows, (0, 0, 1200, 40)), (0x16, 0x65, 0x34)), "the key bar is not green"


async def test_analytics_page_draws_the_demo_history(demo: Demo, tmp_path: Path) -> None:
    require_binary("chromium")
    async with Browser(tmp_path, width=1000, height=700) as browser:
        await browser.open(demo.analytics + "&days=40")
        points = await browser.wait_for(
            "(() => { const p = document.querySelector('#fleet polyline'); "
            "return p && p.getAttribute('points').trim().split(/\\s+/).length; })()")
        assert points >= 30  # a day per point: the history, not one lonely day
        await browser.wait_for("document.querySelectorAll('#profile rect').length >= 24")
        width, height, rows = png_pixels(await browser.screenshot(tmp_path / "analytics.png"))
        assert (width, height) == (1000, 700)
        assert len(colours_in(rows, (0, 0, width, height))) > 20  # lines and bars, anti-aliased
