"""Seed files: every problem at once with file:line: field, references checked against the hub, then written."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from psycopg_pool import AsyncConnectionPool

from tests.integration.hubproc import usagehub
from usagehub.errors import ConfigError, problems_of
from usagehub.prepaid.runtime import pricer_for
from usagehub.prepaid.service import PrepaidService
from usagehub.rating.service import RatingService
from usagehub.runtime.config import SHIPPED_PROFILES
from usagehub.runtime.profile_files import load_profiles
from usagehub.runtime.seed import Known, apply_seed, known_in, load_seed_tree, seed_in_one_transaction, validate_seed
from usagehub.storage.registry import Registry

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "seed.yaml"
PROFILES = {p.id for p in load_profiles(SHIPPED_PROFILES)}

BAD = """tenant: default
accounts:
  - id: a1
    market: Germany
    currency: EURO
    timezone: Mars/Olympus
  - id: a2
    prepaid: {overdraft: "-3", debit_mode: sometimes}
devices:
  - {id: d1, profile: acme-em340, port: 70000}
bindings:
  - {device: ghost, account: a1, valid_from: "2026-01-01T00:00:00Z"}
"""


def _problems(path: Path, known: Known | None = None) -> list[tuple[int | None, str | None, str]]:
    with pytest.raises(ConfigError) as info:
        validate_seed(path, known)
    return [(p.line, p.field, p.message) for p in problems_of(info.value)]


def test_every_value_problem_at_once_with_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "seed.yaml"
    path.write_text(BAD)
    found = _problems(path)
    assert [(line, field) for line, field, _ in found] == [
        (4, "accounts.0.market"), (5, "accounts.0.currency"), (6, "accounts.0.timezone"),
        (8, "accounts.1.prepaid.debit_mode"), (8, "accounts.1.prepaid.overdraft"), (10, "devices.0.port"),
        (12, "bindings.0.device")]  # a reference problem is reported with the value problems
    text = "\n".join(m for _, _, m in found)
    assert "'Germany'" in text and "'EURO'" in text and "'Mars/Olympus'" in text
    assert "SeedPrepaid" not in text and "SeedAccount" not in text  # no Python class names
    assert all(f.startswith(str(path)) for f in str(_error_of(path)).splitlines())


def _error_of(path: Path) -> ConfigError:
    try:
        validate_seed(path)
    except ConfigError as err:
        return err
    raise AssertionError("no error")


def test_indentation_error_names_the_line_without_a_parser_dump(tmp_path: Path) -> None:
    path = tmp_path / "seed.yaml"
    path.write_text("accounts:\n  - id: a1\n    market: DE\n   currency: EUR\n")
    err = _error_of(path)
    assert err.line == 4 and str(err).startswith(f"{path}:4: not valid YAML")
    assert "\n" not in str(err)


async def test_references_are_checked_against_file_and_hub_before_anything_is_written(
        pool: AsyncConnectionPool, tmp_path: Path) -> None:
    registry = Registry(pool)
    await registry.upsert_device(device_id="other-tenant-meter", tenant="t2", profile_id="acme-em340")
    path = tmp_path / "seed.yaml"
    path.write_text("""accounts:
  - {id: a1, plans: [nowhere-plan]}
devices:
  - {id: d1, profile: no-such-profile}
bindings:
  - {device: d1, account: a1, valid_from: "2026-01-01T00:00:00Z"}
  - {device: other-tenant-meter, account: a1, valid_from: "2026-01-01T00:00:00Z"}
  - {device: d1, account: ghost, valid_from: "2026-02-01T00:00:00Z", valid_to: "2026-01-01T00:00:00Z"}
""")
    known = await known_in(registry, "default", load_seed_tree(path), PROFILES, RatingService(pool))
    found = _problems(path, known)
    assert [(line, field) for line, field, _ in found] == [
        (2, "accounts.0.plans.0"), (4, "devices.0.profile"), (7, "bindings.1.device"), (8, "bindings.2.account"),
        (8, "bindings.2.valid_to")]
    assert "neither in this file nor registered" in found[2][2]  # another tenant's device is not ours to bind
    assert await registry.account("a1", tenant="default") is None  # nothing written


async def test_the_documented_example_seeds_plans_prepaid_and_bindings_once(pool: AsyncConnectionPool) -> None:
    registry, rating = Registry(pool), RatingService(pool)
    await rating.start()
    seed = validate_seed(EXAMPLE, await known_in(registry, "default", load_seed_tree(EXAMPLE), PROFILES, rating))
    prepaid = PrepaidService(pool, pricer_for(pool))
    first = await apply_seed(registry, seed, rating=rating, prepaid=prepaid)
    again = await apply_seed(registry, seed, rating=rating, prepaid=prepaid)
    assert first == {"plans": 2, "accounts": 2, "devices": 5, "bindings": 4}
    assert again["bindings"] == 0
    state = await prepaid.account("acme-prepaid-flat")
    assert state is not None and state.balance == Decimal("50.00") and state.low_threshold == Decimal("5.00")
    assert await prepaid.account("acme-home") is None
    assert {p.plan.id for p in await rating.plans(product="energy")} == {"home-power-de"}
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT product, plan_id FROM account_plans WHERE account_id = 'acme-home' "
                                 "ORDER BY product")
        assert await cur.fetchall() == [("armed", "monitoring-de"), ("energy", "home-power-de")]


FIVE_ACCOUNTS = """tenant: t1
plans:
  - id: t1-power
    product: energy
    market: DE
    currency: EUR
    unit: kWh
    versions:
      - valid_from: 2026-01-01
        components: [{type: flat, price: "0.30"}]
accounts:
  - {id: t1-a1, prepaid: {opening_balance: "10.00"}}
  - {id: t1-a2, plans: [t1-power]}
  - {id: t1-a3}
  - {id: t1-a4}
  - id: taken-elsewhere
    name: the fifth account
devices:
  - {id: t1-d1, profile: acme-em340}
bindings:
  - {device: t1-d1, account: t1-a1, valid_from: "2026-01-01T00:00:00Z"}
"""


async def _count(pool: AsyncConnectionPool, table: str) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute(f"SELECT count(*) FROM {table}")  # a fixed table name
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_a_refusal_at_the_fifth_account_leaves_nothing_behind_and_names_file_field_line(
        pool: AsyncConnectionPool, tmp_path: Path) -> None:
    registry = Registry(pool)
    await RatingService(pool).start()
    await registry.upsert_account(account_id="taken-elsewhere", tenant="t2", name="not yours")
    before = {t: await _count(pool, t) for t in ("accounts", "devices", "bindings", "ledger_entries", "account_plans")}
    path = tmp_path / "seed.yaml"
    path.write_text(FIVE_ACCOUNTS)
    tree = load_seed_tree(path)
    seed = validate_seed(path, await known_in(registry, "t1", tree, PROFILES, RatingService(pool)))  # passes
    with pytest.raises(ConfigError) as info:
        await seed_in_one_transaction(pool, seed, tree=tree, source=str(path))
    err = info.value
    assert (err.file, err.line, err.field) == (str(path), 16, "accounts.4.id")
    assert str(err).startswith(f"{path}:16: accounts.4.id: ") and "another tenant" in str(err)
    after = {t: await _count(pool, t) for t in before}
    assert after == before  # the four accounts, the top-up and the plan before it were rolled back
    assert await registry.account("t1-a1", tenant="t1") is None
    assert {p.plan.id for p in await RatingService(pool).plans(tenant="t1")} == set()
    taken = await registry.account("taken-elsewhere", tenant="t2")
    assert taken is not None and taken.name == "not yours"


async def test_a_clean_seed_in_one_transaction_commits_everything(pool: AsyncConnectionPool, tmp_path: Path) -> None:
    registry = Registry(pool)
    await RatingService(pool).start()
    path = tmp_path / "seed.yaml"
    path.write_text(FIVE_ACCOUNTS.replace("taken-elsewhere", "t1-a5"))
    tree = load_seed_tree(path)
    seed = validate_seed(path, await known_in(registry, "t1", tree, PROFILES, RatingService(pool)))
    counts = await seed_in_one_transaction(pool, seed, tree=tree, source=str(path))
    assert counts == {"plans": 1, "accounts": 5, "devices": 1, "bindings": 1}
    state = await PrepaidService(pool, pricer_for(pool)).account("t1-a1")
    assert state is not None and state.balance == Decimal("10.00")
    assert await registry.account("t1-a5", tenant="t1") is not None
    assert len(await registry.bindings(device_ids=["t1-d1"])) == 1


async def test_the_seed_command_reports_the_refusal_with_exit_2_and_writes_nothing(
        pool: AsyncConnectionPool, database_url: str, tmp_path: Path) -> None:
    registry = Registry(pool)
    await registry.upsert_account(account_id="taken-elsewhere", tenant="t2")
    path = tmp_path / "seed.yaml"
    path.write_text(FIVE_ACCOUNTS)
    done = usagehub("seed", str(path), "--database-url", database_url)
    assert done.returncode == 2, done.stderr
    assert f"{path}:16: accounts.4.id: " in done.stdout and "another tenant" in done.stdout
    assert await registry.account("t1-a1", tenant="t1") is None
