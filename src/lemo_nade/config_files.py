"""Config layers from outside: a TOML file (``--config``, a sweep file) and ``--set
KEY=VALUE`` pairs, each read into a plain table or refused with one ConfigError line.

Pure: no torch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lemo_nade.config import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def load_toml(path: Path) -> dict[str, Any]:
    return read_toml(path, "config", "pass an existing TOML file to --config")


def read_toml(path: Path, what: str, fix: str) -> dict[str, Any]:
    """A TOML file's table, or one ConfigError line naming ``what`` and the ``fix``."""
    if path.is_dir():
        raise ConfigError(f"{what}: {path} is a directory, not a file; {fix}")
    if not path.is_file():
        raise ConfigError(f"{what}: file {path} not found; {fix}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what}: {path} is not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: {path} is not UTF-8 text; {fix}") from None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path} ({exc.strerror}); {fix}") from None


def parse_set(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (``thresholds.TA1=0.9``); VALUE is read as TOML, else a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set: expected KEY=VALUE, got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = out
        *parents, leaf = _key_path(key.strip())
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _key_path(key: str) -> list[str]:
    """A TOML key as its parts: ``a.b`` -> [a, b]; ``prices."gpt-4.1"`` -> [prices, gpt-4.1]
    (quotes keep a dot inside a name). Not a valid TOML key: split on dots."""
    try:
        table: Any = tomllib.loads(f"{key} = 0")
    except tomllib.TOMLDecodeError:
        return key.split(".")
    path: list[str] = []
    while isinstance(table, dict) and len(table) == 1:
        ((part, table),) = table.items()
        path.append(part)
    return path
