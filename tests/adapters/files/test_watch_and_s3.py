"""``import --watch DIR`` and S3 buckets (moto's server on loopback) as import sources."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.adapters.files.minipipe import MiniPipeline, load_profiles
from tests.adapters.files.test_importer import CSV, dump_record, write
from tests.peers import free_port
from usagehub.adapters import load
from usagehub.adapters.base import AdapterSettings
from usagehub.adapters.files import import_paths
from usagehub.adapters.files.importer import ProfileResolver
from usagehub.adapters.files.s3 import S3State
from usagehub.adapters.files.watch import DirectoryWatcher

PROFILES = load_profiles("acme-csv-export", "acme-meter-dump")


async def test_watch_moves_files_to_processed_or_failed(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write(inbox / "meters-1.csv", CSV)
    write(inbox / "unknown.txt", "?")
    write(inbox / "dump-2.bin.part", dump_record(1, 1, 1))  # still being copied
    pipeline = MiniPipeline(PROFILES)
    watcher = DirectoryWatcher(inbox, pipeline, ProfileResolver(PROFILES))
    assert await watcher.scan() == []  # first sight: wait one poll for the file to settle
    results = await watcher.scan()
    assert sorted(r.name for r in results) == ["meters-1.csv", "unknown.txt"]
    assert (inbox / "processed" / "meters-1.csv").exists()
    assert (inbox / "failed" / "unknown.txt").exists()
    assert "no profile" in (inbox / "failed" / "unknown.txt.error.txt").read_text()
    assert (inbox / "dump-2.bin.part").exists()
    write(inbox / "meters-1.csv", CSV)  # the same file dropped again: counted once, kept apart
    [again] = await watcher.scan(settle=False)
    assert (again.accepted, again.duplicates) == (0, 3)
    assert (inbox / "processed" / "meters-1.1.csv").exists()
    assert len(pipeline.events) == 3


async def test_files_adapter_watches_a_folder(tmp_path: Path) -> None:
    factory = load("files")
    config = factory.config_model.model_validate({"watch": str(tmp_path / "drop"), "poll_s": 0.05})
    pipeline = MiniPipeline(PROFILES)
    async with factory.create(config, AdapterSettings(profiles=PROFILES, devices=None,  # type: ignore[arg-type]
                                                      data_dir=tmp_path)) as adapter:
        task = asyncio.create_task(adapter.run(pipeline))
        await asyncio.sleep(0.1)
        write(tmp_path / "drop" / "dump-9.bin", dump_record(4, 1, 10) + dump_record(4, 2, 20))
        for _ in range(100):
            if (tmp_path / "drop" / "processed" / "dump-9.bin").exists():
                break
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(pipeline.events) == 2


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    moto_server = pytest.importorskip("moto.server")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                        region_name="us-east-1")


async def test_s3_objects_are_imported_once(tmp_path: Path, s3_endpoint: str) -> None:
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="exports")
    client.put_object(Bucket="exports", Key="2026/meters-1.csv", Body=CSV.encode())
    client.put_object(Bucket="exports", Key="2026/dump-1.bin", Body=dump_record(2, 1, 5))
    client.put_object(Bucket="exports", Key="other/meters-2.csv", Body=CSV.encode())
    pipeline = MiniPipeline(PROFILES)

    async def run() -> Any:
        return await import_paths(["s3://exports/2026/"], pipeline, PROFILES, progress=False,
                                  data_dir=tmp_path, s3_client=client)

    first = await run()
    assert sorted(f.name for f in first.files) == ["dump-1.bin", "meters-1.csv"]
    assert first.accepted == 4
    message = next(m for m in pipeline.messages if m.topic == "dump-1.bin")
    assert message.meta["file"] == "s3://exports/2026/dump-1.bin"
    assert (await run()).files == []  # already imported: skipped by the state file
    changed_body = dump_record(2, 1, 5) + dump_record(2, 2, 6)
    client.put_object(Bucket="exports", Key="2026/dump-1.bin", Body=changed_body)
    changed = await run()
    assert [(f.name, f.accepted, f.duplicates) for f in changed.files] == [("dump-1.bin", 1, 1)]
    state = S3State(tmp_path / "import" / "s3-imported.jsonl")
    assert len(state._done) == 3


def test_torn_state_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"bucket":"b","key":"k","etag":"e"}\n{"bucket":"b","ke')
    assert S3State(path)._done == {("b", "k", "e")}
