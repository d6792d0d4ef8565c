"""docs/config.md against the code: the exit-code table is the one of hydranet.cli._codes, and every
shipped config is valid and has validation data."""

import re
from pathlib import Path

import pytest

from hydranet.cli import _codes
from hydranet.cli.config import SCHEMA, SOURCE_KEYS, load_config

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "config.md").read_text()


def test_the_exit_code_table_is_the_code():
    rows = re.findall(r"^\| `(\d+)` \| `(EXIT_\w+)` \| (.+) \|$", DOC, re.M)
    documented = {name: int(code) for code, name, _ in rows}
    defined = {name: value for name, value in vars(_codes).items() if name.startswith("EXIT_")}
    assert documented == defined
    assert sorted(_codes.__all__) == sorted(defined)


@pytest.mark.parametrize(
    ("fault", "name"),
    [
        (KeyboardInterrupt(), "EXIT_INTERRUPTED"),
        (PermissionError(13, "Permission denied", "x"), "EXIT_IO"),
        (FileNotFoundError(2, "No such file or directory", "x"), "EXIT_USAGE"),
    ],
)
def test_the_error_surface_uses_the_documented_codes(fault, name):
    from hydranet.cli.errors import classify

    row = re.search(rf"^\| `(\d+)` \| `{name}` \|", DOC, re.M)
    assert classify(fault).code == int(row.group(1))


def test_every_key_is_documented():
    for section in ("sampler", "loader", "model", "trainer"):
        for key in SCHEMA[section]:
            assert f"`{key}`" in DOC, f"{section}.{key}"
    for key in SCHEMA["data.split"]:
        assert f"`{key}`" in DOC, f"data.split.{key}"
    for source, (required, optional) in SOURCE_KEYS.items():
        assert f"| `{source}` |" in DOC, source
        for key in required | optional:
            assert f"`{key}`" in DOC, f"{source}.{key}"


@pytest.mark.parametrize("config", sorted((ROOT / "examples" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid_and_has_validation_data(config):
    cfg = load_config(config)
    assert "val" in cfg.data or ("split" in cfg.data and cfg.data["split"]["val"]), config.name
