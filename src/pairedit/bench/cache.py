"""The on-disk cache: small JSON records, each sealed with a content hash, and the files they name.

A record is valid only when its JSON parses, its ``sha256`` field equals the hash of the rest of
the record, its ``key`` is the key asked for, and every file it lists exists with the recorded
sha256. Anything else is reported as corrupt (truncated write, bit rot, hand edits, a file
deleted) and the caller recomputes the work; a damaged entry is never silently used.
Writes are atomic (``images.atomic_write``), so a killed run leaves either the old or the new file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..images import atomic_write

RECORD_FORMAT = "pairedit-bench-record/1"


class CorruptEntry(Exception):
    """A cache record that exists but cannot be trusted; the message says why."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    return sha256_bytes(Path(path).read_bytes())


def _seal(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "sha256"}
    return sha256_bytes(json.dumps(body, sort_keys=True, ensure_ascii=True).encode())


def key_of(obj) -> str:
    """A 16-hex-digit hash of a JSON-able description of some work (its inputs and settings)."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str).encode())[:16]


class Cache:
    """Records under ``root``; file paths inside records are relative to ``root``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def write(self, rel: str, record: dict, files: dict[str, str] | None = None) -> dict:
        """Seal and atomically write ``record`` at ``rel`` (a .json path); ``files`` maps a name to a
        path relative to the root of a file already written, whose sha256 the record then carries."""
        record = dict(record, format=RECORD_FORMAT)
        if files:
            record["files"] = {name: {"path": p, "sha256": sha256_file(self.root / p)} for name, p in files.items()}
        record["sha256"] = _seal(record)
        text = json.dumps(record, indent=1, sort_keys=True)
        atomic_write(self.root / rel, lambda tmp: Path(tmp).write_text(text))
        return record

    def read(self, rel: str, key: str) -> dict | None:
        """The valid record at ``rel`` for ``key``; None when there is none; CorruptEntry when damaged."""
        path = self.root / rel
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CorruptEntry(f"{path}: unreadable JSON ({type(err).__name__})") from err
        if not isinstance(record, dict) or record.get("sha256") != _seal(record):
            raise CorruptEntry(f"{path}: content hash mismatch")
        if record.get("format") != RECORD_FORMAT or record.get("key") != key:
            raise CorruptEntry(f"{path}: record is for key {record.get('key')!r}, expected {key!r}")
        for name, f in record.get("files", {}).items():
            fp = self.root / f["path"]
            if not fp.exists():
                raise CorruptEntry(f"{path}: its {name} file {fp} is missing")
            if sha256_file(fp) != f["sha256"]:
                raise CorruptEntry(f"{path}: its {name} file {fp} does not match its hash")
        return record

    def file(self, record: dict, name: str) -> Path:
        return self.root / record["files"][name]["path"]
