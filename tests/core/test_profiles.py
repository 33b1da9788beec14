"""Profiles: the shipped ones load; every error names file, field and line."""

from __future__ import annotations

import pytest

from usagehub.core.profiles import parse_profile
from usagehub.errors import ConfigError
from usagehub.runtime.config import SHIPPED_PROFILES
from usagehub.runtime.profile_files import check_profiles

GOOD = """\
id: acme
match: {transport: mqtt, topic: "meters/{device_id}/reading"}
decode: {type: json}
meters:
  energy:
    value: "$.e"
    kind: cumulative
    unit: kWh
    aggregation: sum
"""


def test_every_shipped_profile_loads() -> None:
    profiles, errors = check_profiles(SHIPPED_PROFILES)
    assert errors == []
    assert {"acme-em340", "acme-alarm-ax", "acme-dc100-gateway"} <= {p.id for p in profiles}


@pytest.mark.parametrize(("text", "field", "line", "words"), [
    (GOOD.replace("aggregation: sum", "aggregation: summ"), "meters.energy.aggregation", 9, "Input should be"),
    (GOOD.replace("kind: cumulative", "kind: cumulative\n    colour: red"), "meters.energy.colour", 8, "Extra"),
    (GOOD.replace('value: "$.e"', 'value: "e"'), "meters.energy.value", 6, "must start with '$'"),
    (GOOD.replace("{type: json}", "{type: xml}"), "decode", 3, "unknown decode type"),
    (GOOD.replace('topic: "meters/{device_id}/reading"', 'topic: "meters/x"'), "(profile)", 1, "device id"),
    (GOOD.replace("    unit: kWh\n", ""), "meters.energy.unit", 5, "Field required"),
])
def test_errors_name_file_field_and_line(text: str, field: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_profile(text, "profiles/acme.yaml", expected_id="acme")
    err = info.value
    assert (err.file, err.field, err.line) == ("profiles/acme.yaml", field, line)
    assert words in str(err)
    assert str(err).startswith(f"profiles/acme.yaml:{line}:")


def test_id_must_match_the_file_name() -> None:
    with pytest.raises(ConfigError, match="does not match the file name") as info:
        parse_profile(GOOD, "other.yaml", expected_id="other")
    assert info.value.line == 1


def test_yaml_syntax_error_has_a_line() -> None:
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        parse_profile(GOOD + "  bad: [unclosed\n", "acme.yaml")
    assert info.value.line is not None and info.value.line >= 10


def test_check_reports_every_bad_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "acme.yaml").write_text(GOOD)
    (tmp_path / "broken.yaml").write_text(GOOD.replace("id: acme", "id: broken").replace("kWh", "kWh\n    x: 1"))
    (tmp_path / "wrong.yaml").write_text(GOOD)
    profiles, errors = check_profiles(tmp_path)
    assert [p.id for p in profiles] == ["acme"]
    assert sorted(e.file.rsplit("/", 1)[-1] for e in errors if e.file) == ["broken.yaml", "wrong.yaml"]
