"""The console's pure parts: chart geometry and the session's tokens."""

from __future__ import annotations

import datetime as dt

import numpy as np

from functions.console import charts, session
from shared.entities import Account, ApiKey, utcnow


def test_heatmap_cells_are_escaped_and_row_normalised():
    labels = ["a", "<b>"]
    heat = charts.heatmap(labels, [[3, 1], [0, 4]])
    assert heat.count == 4 and heat.shown_all and "<b>" not in str(heat.cells)
    assert "&lt;b&gt;" in str(heat.cells)
    assert 'data-count="3"' in heat.cells and "(75.0% of a)" in heat.cells


def test_large_matrices_show_the_classes_most_involved_in_errors():
    n = 100
    matrix = np.eye(n, dtype=int) * 10
    matrix[7, 42] = 5
    matrix[99, 0] = 2
    heat = charts.heatmap([f"c{i}" for i in range(n)], matrix)
    assert not heat.shown_all and heat.count == charts.MAX_HEATMAP_CLASSES**2
    assert {"c7", "c42", "c99", "c0"} <= set(heat.labels)
    pairs = charts.top_confused([f"c{i}" for i in range(n)], matrix)
    assert [(p.true_label, p.predicted_label, p.count) for p in pairs] == [("c7", "c42", 5), ("c99", "c0", 2)]


def test_reliability_bars_follow_accuracy():
    bins = [
        {"low": i / 10, "high": (i + 1) / 10, "count": 10 * i, "confidence": i / 10 + 0.05, "accuracy": 0.5} for i in range(10)
    ]
    diagram = charts.reliability(bins, size=100)
    assert all(abs(b.height - 50) < 1e-9 for b in diagram.bars)
    assert abs(diagram.bars[0].gap_height - 45) < 1e-9


def _key(**fields) -> ApiKey:
    return ApiKey(id="key_00000000000000000001", account="acc_00000000000000000001", name="k", secret_hash="x", **fields)


def test_tokens_never_outlive_the_key_and_are_bound_to_the_secret():
    key = _key(expires_at=utcnow() + dt.timedelta(seconds=30))
    token, expires = session.issue(b"s", key, lifetime_s=3600)
    assert expires <= int(key.expires_at.timestamp())
    assert "assay_" not in token and key.id in token
    assert session.csrf_valid(b"s", token, session.csrf_token(b"s", token))
    assert not session.csrf_valid(b"other", token, session.csrf_token(b"s", token))
    assert not session.csrf_valid(b"s", token, None)


def test_revoked_expired_or_disabled_keys_are_unusable():
    account = Account(id="acc_00000000000000000001", account="acc_00000000000000000001", name="a")
    session.check_usable(_key(), account)
    for key, acct in (
        (_key(status="revoked"), account),
        (_key(expires_at=utcnow() - dt.timedelta(seconds=1)), account),
        (_key(), Account(id="acc_00000000000000000001", account="acc_00000000000000000001", name="a", status="disabled")),
        (_key(), None),
    ):
        try:
            session.check_usable(key, acct)
        except session.Unauthenticated:
            continue
        raise AssertionError("usable")


def test_image_signatures_expire_and_bind_every_field():
    fields = {
        "account": "acc",
        "evaluation_id": "evl",
        "instance_id": "i",
        "part": "part-00000.parquet",
        "expires": 2_000_000_000,
    }
    sig = session.image_signature(b"s", **fields)
    assert session.image_signature_valid(b"s", sig, **fields, now=1_000_000_000)
    assert not session.image_signature_valid(b"s", sig, **fields, now=2_000_000_001)
    for name, value in (("account", "acc2"), ("instance_id", "j"), ("part", "part-00001.parquet")):
        assert not session.image_signature_valid(b"s", sig, **{**fields, name: value}, now=1_000_000_000)
