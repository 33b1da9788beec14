"""What a person sees when the input is wrong: every problem at once, one line each, on stdout, exit 2, fast."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.integration.hubproc import usagehub
from tests.peers import free_port


def test_profiles_check_reports_every_problem_of_every_file_unwrapped(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(Path("device_profiles/acme-em340.yaml").read_text()
                                        .replace("id: acme-em340", "id: good"))
    (tmp_path / "bad.yaml").write_text(
        "id: bad\nmatch: {transport: mqtt, topic: 'x/{device_id}'}\ndecode: {type: json}\n"
        "meters:\n  energy: {value: '$.e', kind: sideways, unit: kWh, aggregation: sum}\n"
        "  power: {value: '$.p', kind: gauge, unit: kW, aggregation: max, colour: blue}\n")
    (tmp_path / "renamed.yaml").write_text("id: something-else-with-a-really-long-name-to-overflow-eighty-columns\n")
    result = usagehub("profiles", "check", str(tmp_path))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    bad = [ln for ln in lines if ln.startswith(f"{tmp_path}/bad.yaml:")]
    assert [ln.split(": ")[1] for ln in bad] == ["meters.energy.kind", "meters.power.colour"], bad
    assert bad[0].startswith(f"{tmp_path}/bad.yaml:5: ") and bad[1].startswith(f"{tmp_path}/bad.yaml:6: ")
    renamed = [ln for ln in lines if ln.startswith(f"{tmp_path}/renamed.yaml:1: id: ")]
    assert renamed and len(renamed[0]) > 80  # one line, not wrapped at 80 columns when piped
    assert "ok good: 2 meters (mqtt)" in lines
    assert "Error" not in result.stdout and "Exception" not in result.stdout + result.stderr


def test_toml_reports_all_problems_and_unknown_adapter_tables_before_starting(tmp_path: Path) -> None:
    toml = tmp_path / "hub.toml"
    toml.write_text('http_port = "eighty"\nlog_level = "LOUD"\n\n[adapters.mqtt]\nqos = 7\n\n[adapters.zigbee]\n'
                    'port = 1\n')
    started = time.monotonic()
    result = usagehub("serve", "--config", str(toml), "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert time.monotonic() - started < 20  # nothing was started (no broker, no database)
    out = result.stdout
    assert f"{toml}:1: http_port: " in out and f"{toml}:2: log_level: " in out
    assert f"{toml}:7: adapters.zigbee: unknown adapter 'zigbee'" in out
    assert f"{toml}:5: adapters.mqtt.qos: " in out
    assert not (tmp_path / "data").exists()


def test_database_url_failures_are_fast_and_name_the_cause(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    cases = {
        "mysql://root@127.0.0.1/db": "is a mysql URL; usagehub needs PostgreSQL",
        "not a url": "is not a PostgreSQL URL",
        f"postgresql://u:secret@127.0.0.1:{port}/db": "connection refused",
    }
    for url, cause in cases.items():
        started = time.monotonic()
        result = usagehub("keys", "create", "--role", "admin", "--database-url", url)
        assert time.monotonic() - started < 12, url  # the CLI itself starts in a few seconds on a busy machine
        assert result.returncode == 2 and cause in result.stdout, (url, result.stdout, result.stderr)
        assert "secret" not in result.stdout and "Traceback" not in result.stderr


def test_a_busy_port_is_one_line_naming_the_port_and_the_flag(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = usagehub("serve", "--http-port", str(port), "--embedded-broker-port", str(port + 0),
                          "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"port {port} on 127.0.0.1 (GraphQL/HTTP) is already in use; choose another with --http-port" \
        in result.stdout
    assert "--embedded-broker-port" in result.stdout and "Traceback" not in result.stderr
    assert len(result.stdout.strip().splitlines()) == 3  # two problems and the count


def test_seed_reports_every_problem_before_touching_the_database(tmp_path: Path) -> None:
    seed = tmp_path / "fleet.yaml"
    seed.write_text("accounts:\n  - {id: a1, timezone: Mars/Olympus, currency: EURO}\n"
                    "devices:\n  - {id: d1, profile: acme-em999}\n"
                    "bindings:\n  - {device: d1, account: nobody, valid_from: '2026-01-01T00:00:00Z'}\n")
    unreachable = f"postgresql://u@127.0.0.1:{free_port()}/db"  # never contacted: the file alone is wrong
    result = usagehub("seed", str(seed), "--database-url", unreachable)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"{seed}:2: accounts.0.currency: currency 'EURO' is not an ISO 4217 code usagehub knows "
        "(e.g. EUR, GBP, USD, CHF, SEK, NOK)",
        f"{seed}:2: accounts.0.timezone: time zone 'Mars/Olympus' is not an IANA zone such as Europe/Berlin",
        f"{seed}:4: devices.0.profile: no device profile 'acme-em999' (profiles: " + ", ".join(sorted(
            p.stem for p in Path("device_profiles").glob("*.yaml"))) + ")",
        "3 problems; nothing was changed"]  # 'nobody' might be in the hub: that is asked once the file is right
