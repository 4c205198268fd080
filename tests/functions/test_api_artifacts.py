"""Models and datasets: metadata validation, upload tickets, reads, lists, deletion."""

from __future__ import annotations

import urllib.parse

import pytest
from conftest import DATASET, MODEL

from shared.entities import ArtifactStatus, Model
from shared.store import ANY_ACCOUNT

KINDS = [("models", MODEL, "model"), ("datasets", DATASET, "dataset")]


@pytest.mark.parametrize("path,body,key", KINDS)
def test_create_returns_the_entity_and_a_signed_upload_ticket(client, alice, settings, path, body, key):
    r = client.post(f"/v1/{path}", json=body, headers=alice.write)
    assert r.status_code == 201, r.json
    entity, ticket = r.json[key], r.json["upload"]
    assert entity["status"] == "awaiting_upload" and entity["declared_size"] == body["size"]
    assert entity["labels"] == {"team": "vision"} and entity["account"] == alice.account
    assert "upload_object" not in entity and "lease_owner" not in entity
    assert ticket["method"] == "PUT"
    assert ticket["headers"] == {"Content-Type": "application/zip", "x-goog-content-length-range": f"0,{body['size']}"}
    query = urllib.parse.parse_qs(urllib.parse.urlparse(ticket["url"]).query)
    assert {"content-type", "x-goog-content-length-range"} <= set(query["X-Goog-SignedHeaders"][0].split(";"))
    assert query["X-Goog-Expires"] == [str(settings.upload_url_expiry_s)]
    assert f"/uploads/{path}/{entity['id']}/" in ticket["url"]


@pytest.mark.parametrize(
    "change,field",
    [
        ({"name": "Not_A_Name"}, "name"),
        ({"name": "x" * 64}, "name"),
        ({"labels": {"bad key!": "v"}}, "labels"),
        ({"labels": {"team": "no spaces"}}, "labels"),
        ({"task": "object-detection"}, "task"),
        ({"size": 0}, "size"),
        ({"size": "12"}, "size"),
        ({"size": 10**15}, "size"),
        ({"content_type": "text/html"}, "content_type"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_invalid_model_metadata_is_422_naming_the_field(client, alice, change, field):
    r = client.post("/v1/models", json={**MODEL, **change}, headers=alice.write)
    assert r.status_code == 422, r.json
    paths = [f["path"] for f in r.json["error"]["details"]["fields"]]
    assert any(p == field or p.startswith(field + ".") for p in paths), paths


def test_model_framework_and_dataset_format_are_checked(client, alice):
    assert client.post("/v1/models", json={**MODEL, "framework": "onnx"}, headers=alice.write).status_code == 422
    r = client.post("/v1/datasets", json={**DATASET, "format": "parquet"}, headers=alice.write)
    assert r.status_code == 201 and r.json["upload"]["headers"]["Content-Type"] == "application/vnd.apache.parquet"
    # Any content type of a dataset format is taken (the schema's enum); the one sent is signed in.
    r = client.post(
        "/v1/datasets",
        json={**DATASET, "format": "imagefolder-tar.gz", "content_type": "application/x-gzip"},
        headers=alice.write,
    )
    assert r.status_code == 201 and r.json["upload"]["headers"]["Content-Type"] == "application/x-gzip"
    for wrong in ("APPLICATION/ZIP", "", "application/zip ", "text/html"):
        assert client.post("/v1/datasets", json={**DATASET, "content_type": wrong}, headers=alice.write).status_code == 422


def test_a_new_ticket_only_while_awaiting_upload(client, services, alice):
    model = client.post("/v1/models", json=MODEL, headers=alice.write).json["model"]
    r = client.post(f"/v1/models/{model['id']}/upload-ticket", headers=alice.write)
    assert r.status_code == 200 and r.json["method"] == "PUT"
    services.store.transition(Model, model["id"], account=ANY_ACCOUNT, expected="awaiting_upload", to="uploaded")
    r = client.post(f"/v1/models/{model['id']}/upload-ticket", headers=alice.write)
    assert r.status_code == 409 and r.json["error"]["details"] == {"status": "uploaded"}


def test_get_list_filter_and_page(client, services, alice):
    ids = []
    for i in range(7):
        body = {**MODEL, "name": f"m{i % 2}", "labels": {"team": "vision" if i < 5 else "nlp", "i": str(i)}}
        ids.append(client.post("/v1/models", json=body, headers=alice.write).json["model"]["id"])
    services.store.transition(Model, ids[0], account=ANY_ACCOUNT, expected="awaiting_upload", to="uploaded")

    assert client.get(f"/v1/models/{ids[3]}", headers=alice.read).json["id"] == ids[3]
    seen, token = [], None
    while True:
        url = "/v1/models?limit=3" + (f"&page_token={token}" if token else "")
        page = client.get(url, headers=alice.read).json
        seen += [m["id"] for m in page["items"]]
        token = page["next_page_token"]
        if not token:
            break
    assert seen == list(reversed(ids))  # newest first, each once
    assert [m["id"] for m in client.get("/v1/models?status=uploaded", headers=alice.read).json["items"]] == [ids[0]]
    assert len(client.get("/v1/models?name=m1", headers=alice.read).json["items"]) == 3
    assert len(client.get("/v1/models?labels=team=nlp", headers=alice.read).json["items"]) == 2
    assert [m["id"] for m in client.get("/v1/models?labels=team=vision,i=2", headers=alice.read).json["items"]] == [ids[2]]
    assert client.get("/v1/models?status=bogus", headers=alice.read).status_code == 422
    assert client.get("/v1/models?limit=0", headers=alice.read).status_code == 422
    assert client.get("/v1/models?labels=novalue", headers=alice.read).status_code == 422
    assert client.get("/v1/models?page_token=!!not-a-cursor!!", headers=alice.read).status_code == 400


@pytest.mark.parametrize("path,body,key", KINDS)
def test_delete_marks_deleting_with_202_and_is_idempotent(client, alice, path, body, key):
    entity = client.post(f"/v1/{path}", json=body, headers=alice.write).json[key]
    for _ in range(2):
        r = client.delete(f"/v1/{path}/{entity['id']}", headers=alice.write)
        assert r.status_code == 202 and r.json["status"] == "deleting"
    assert client.get(f"/v1/{path}/{entity['id']}", headers=alice.read).json["status"] == ArtifactStatus.deleting
    assert client.post(f"/v1/{path}/{entity['id']}/upload-ticket", headers=alice.write).status_code == 409


def test_missing_and_malformed_ids_are_404(client, alice):
    assert client.get("/v1/models/mdl_00000000000000000000", headers=alice.read).status_code == 404
    assert client.get("/v1/models/not-an-id", headers=alice.read).status_code == 404
    assert client.get("/v1/models/dst_00000000000000000000", headers=alice.read).status_code == 404
    assert client.delete("/v1/datasets/" + "x" * 2000, headers=alice.write).status_code == 404
