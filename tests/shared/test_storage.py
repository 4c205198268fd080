"""Cloud Storage layer on fake-gcs-server, with finalize notifications through Pub/Sub."""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest
import requests

from shared import storage as paths
from shared.pubsub import ensure_subscription, subscriber_client
from shared.settings import Settings
from shared.storage import Storage


def pull_until(subscriber, subscription: str, predicate, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = subscriber.pull(request={"subscription": subscription, "max_messages": 50}, timeout=5)
        if response.received_messages:
            subscriber.acknowledge(
                request={"subscription": subscription, "ack_ids": [m.ack_id for m in response.received_messages]}
            )
        for m in response.received_messages:
            if predicate(m.message):
                return m.message
    raise AssertionError("no matching message arrived")


def test_signed_put_upload_lands_and_its_finalize_notification_arrives(settings: Settings, storage: Storage):
    subscriber = subscriber_client(settings)
    sub = ensure_subscription(subscriber, settings.project, settings.storage_topic, f"test-{settings.bucket}")
    name = paths.upload_object("models", "mdl_abcdefghij0123456789", "model.zip")
    ticket = storage.signed_put(name, content_type="application/zip", max_bytes=1024)

    body = b"PK\x03\x04 not really a zip"
    response = requests.put(ticket.url, data=body, headers=ticket.headers, timeout=10)
    assert response.status_code in (200, 201), response.text

    assert storage.read_bytes(name) == body
    assert storage.size(name) == len(body)
    message = pull_until(
        subscriber, sub, lambda m: m.attributes.get("objectId") == name and m.attributes.get("bucketId") == settings.bucket
    )
    assert message.attributes["eventType"] == "OBJECT_FINALIZE"
    assert json.loads(message.data)["size"] in (len(body), str(len(body)))


def test_signed_put_signs_content_type_length_range_and_expiry(storage: Storage, settings: Settings):
    ticket = storage.signed_put("uploads/models/x/model.zip", content_type="application/zip", max_bytes=5000)
    query = urllib.parse.parse_qs(urllib.parse.urlparse(ticket.url).query)
    assert query["X-Goog-Algorithm"] == ["GOOG4-RSA-SHA256"]
    assert query["X-Goog-Expires"] == [str(settings.upload_url_expiry_s)]
    signed = query["X-Goog-SignedHeaders"][0].split(";")
    assert {"content-type", "x-goog-content-length-range", "host"} <= set(signed)
    assert ticket.headers == {"Content-Type": "application/zip", "x-goog-content-length-range": "0,5000"}
    assert ticket.method == "PUT"
    assert ticket.url.startswith(settings.storage_emulator_host)


def test_signed_get_downloads_the_object(storage: Storage):
    storage.write_bytes("evaluations/evl_x/summary.json", b'{"accuracy": 1}')
    ticket = storage.signed_get("evaluations/evl_x/summary.json")
    assert requests.get(ticket.url, timeout=10).content == b'{"accuracy": 1}'


def test_delete_prefix_removes_only_that_prefix(storage: Storage):
    for i in range(3):
        storage.write_bytes(paths.prediction_shard("evl_a", i), b"x")
    storage.write_bytes(paths.prediction_shard("evl_ab", 0), b"y")
    assert storage.delete_prefix(paths.evaluation_prefix("evl_a")) == 3
    assert list(storage.list("evaluations/evl_a/")) == []
    assert [n for n, _ in storage.list("evaluations/")] == [paths.prediction_shard("evl_ab", 0)]
    assert storage.delete_prefix(paths.evaluation_prefix("evl_a")) == 0
    with pytest.raises(ValueError):
        storage.delete_prefix("evaluations")


def test_upload_object_paths_parse_back():
    name = paths.upload_object("datasets", "dst_abcdefghij0123456789", "data.parquet")
    assert paths.parse_upload_object(name) == ("datasets", "dst_abcdefghij0123456789")
    assert paths.parse_upload_object("models/x/config.json") is None
    assert paths.parse_upload_object("uploads/other/x/y") is None
