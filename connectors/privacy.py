"""Pseudonymous ids: what logs, the audit store and file names carry instead of patient ids, accession numbers
or DICOM UIDs.

Example:
    >>> key = load_key("runs/pseudonym.key")        # FUSIONLINE_PSEUDONYM_KEY when set, else the key file
    >>> pseudonym("1.2.840.113619.2.55.3.604688119", key)
    'case-3f1c9a0b7d2e4c51'

A pseudonym is a keyed hash (HMAC-SHA256, the first 16 hex digits): the same value and key always give the same
id, so a case keeps its id from source to sink and across runs; without the key nobody can test a guessed patient
id against it, as they could against a plain hash. Whoever holds the key (the site running the line) can
re-identify a case by hashing its candidates; keep the key with the PACS, not with the audit store.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_ENV = "FUSIONLINE_PSEUDONYM_KEY"
DEFAULT_KEY_FILE = "runs/pseudonym.key"
KEY_BYTES = 32
MIN_KEY_BYTES = 16


def pseudonym(value: str, key: bytes, prefix: str = "case") -> str:
    """``<prefix>-<16 hex digits>``: HMAC-SHA256 of ``value`` under ``key``; ValueError on an empty value or a key
    shorter than 16 bytes."""
    if not value:
        raise ValueError("pseudonym: the value is empty")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"pseudonym: the key has {len(key)} bytes, fewer than {MIN_KEY_BYTES}")
    return f"{prefix}-{hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:16]}"


def load_key(path: str | Path = DEFAULT_KEY_FILE) -> bytes:
    """The pseudonym key: ``FUSIONLINE_PSEUDONYM_KEY`` (hex, or any text of 16+ bytes) when set, else the key file
    at ``path``, created once with 32 random bytes (hex) and mode 0600.

    ValueError when the variable or the file holds fewer than 16 bytes, or the file is readable by others.
    """
    text = os.environ.get(KEY_ENV)
    where = KEY_ENV
    if text is None:
        path = Path(path)
        where = str(path)
        if not path.exists():
            _create_key_file(path)
        if path.stat().st_mode & 0o077:
            raise ValueError(f"pseudonym key file {path} is readable by others (chmod 600 it)")
        text = path.read_text()
    key = _key_bytes(text.strip())
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"pseudonym key in {where} has {len(key)} bytes, fewer than {MIN_KEY_BYTES}")
    return key


def _key_bytes(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        return text.encode()


def _create_key_file(path: Path) -> None:
    """Write the key beside ``path``, then link it into place: when two processes race, one key wins whole and
    both read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(KEY_BYTES) + "\n")
        os.link(draft, path)
    except FileExistsError:
        pass
    finally:
        draft.unlink()
