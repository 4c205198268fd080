"""Identifiers: short, unguessable, prefixed by what they name (``mdl_…``, ``evl_…``)."""

from __future__ import annotations

import re
import secrets

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
ID_PATTERN = re.compile(r"^[a-z]{3}_[0-9a-z]{20}$")


def new_id(prefix: str) -> str:
    return prefix + "_" + "".join(secrets.choice(_ALPHABET) for _ in range(20))


def is_valid_id(value: str) -> bool:
    return bool(ID_PATTERN.fullmatch(value))
