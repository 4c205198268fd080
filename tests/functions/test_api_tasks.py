"""The task table through the API: GET /v1/tasks, and requests checked against the model's task."""

from __future__ import annotations

from conftest import DATASET, MODEL

from shared.entities import Dataset, Evaluation, Model, evaluation_fingerprint
from shared.modeltasks import SPECS
from shared.modeltasks.text_classification import TextClassificationConfig
from shared.store import ANY_ACCOUNT


def make_ready(client, services, tenant, *, model_task: str, dataset_task: str, splits=None, shape=None) -> tuple[str, str]:
    model = client.post("/v1/models", json={**MODEL, "task": model_task}, headers=tenant.write)
    declared = {"shape": shape} if shape else {}
    dataset = client.post("/v1/datasets", json={**DATASET, "task": dataset_task, **declared}, headers=tenant.write)
    assert model.status_code == dataset.status_code == 201, (model.json, dataset.json)
    for cls, entity_id in ((Model, model.json["model"]["id"]), (Dataset, dataset.json["dataset"]["id"])):
        stored = services.store.get(cls, entity_id, account=ANY_ACCOUNT)
        changes = {"status": "ready", **({"splits": splits or {"test": 10}} if cls is Dataset else {})}
        services.store.put(stored.model_copy(update=changes))
    return model.json["model"]["id"], dataset.json["dataset"]["id"]


def test_the_tasks_route_publishes_the_table_without_a_key(client):
    r = client.get("/v1/tasks")
    assert r.status_code == 200
    tasks = {t["name"]: t for t in r.json["tasks"]}
    assert set(tasks) == set(SPECS) >= {"image-classification", "text-classification"}
    for name, spec in SPECS.items():
        got = tasks[name]
        assert got["config_schema"] == spec.config.model_json_schema()
        assert [m["name"] for m in got["metrics"]] == list(spec.metrics)
        assert all(m["description"] for m in got["metrics"])
        assert got["dataset"]["formats"] == list(spec.dataset_formats)
        assert got["dataset"]["shapes"] == list(spec.dataset_shapes)
        assert got["model"]["auto_class"] == spec.auto_class
        assert [c["name"] for c in got["prediction_columns"]] == [c.name for c in spec.prediction_columns]
    assert {"max_length", "truncation_side"} <= set(tasks["text-classification"]["config_schema"]["properties"])
    assert "text_excerpt" in [c["name"] for c in tasks["text-classification"]["prediction_columns"]]


def test_a_dataset_format_must_be_one_of_its_tasks(client, alice):
    text = client.post("/v1/datasets", json={**DATASET, "task": "text-classification"}, headers=alice.write)
    assert text.status_code == 201 and text.json["dataset"]["format"] == "parquet"  # the task's first format
    jsonl = client.post("/v1/datasets", json={**DATASET, "task": "text-classification", "format": "jsonl"}, headers=alice.write)
    assert jsonl.status_code == 201 and jsonl.json["dataset"]["task"] == "text-classification"
    assert jsonl.json["dataset"]["format"] == "jsonl" and "application/jsonl" in jsonl.json["upload"]["headers"].values()
    wrong = client.post(
        "/v1/datasets", json={**DATASET, "task": "text-classification", "format": "imagefolder-zip"}, headers=alice.write
    )
    assert wrong.status_code == 422 and "text-classification formats" in wrong.json["error"]["details"]["fields"][0]["message"]
    csv_for_images = client.post("/v1/datasets", json={**DATASET, "format": "csv"}, headers=alice.write)
    assert csv_for_images.status_code == 422
    unknown = client.post("/v1/datasets", json={**DATASET, "task": "speech-recognition"}, headers=alice.write)
    assert unknown.status_code == 422 and unknown.json["error"]["details"]["fields"][0]["path"] == "task"


def test_a_config_is_checked_against_the_models_task(client, services, alice):
    text_model, text_dataset = make_ready(
        client, services, alice, model_task="text-classification", dataset_task="text-classification"
    )
    r = client.post(
        "/v1/evaluations",
        json={"model_id": text_model, "dataset_id": text_dataset, "config": {"max_length": 128, "truncation_side": "left"}},
        headers=alice.write,
    )
    assert r.status_code == 201, r.json
    [ordered] = r.json["evaluations"]
    evaluation = ordered["evaluation"]
    assert evaluation["task"] == "text-classification"
    assert evaluation["config"] == {
        "top_k": 5,
        "label_mapping": None,
        "batch_size": 64,
        "max_length": 128,
        "truncation_side": "left",
    }
    stored = services.store.get(Evaluation, evaluation["id"], account=ANY_ACCOUNT)
    config = stored.inference_config()
    assert isinstance(config, TextClassificationConfig) and config.max_length == 128
    assert stored.fingerprint == evaluation_fingerprint(model_id=text_model, dataset_id=text_dataset, split="test", config=config)

    # Truncation changes results, the batch size does not.
    same = client.post(
        "/v1/evaluations",
        json={
            "model_id": text_model,
            "dataset_id": text_dataset,
            "config": {"max_length": 128, "truncation_side": "left", "batch_size": 7},
        },
        headers=alice.write,
    )
    assert same.status_code == 200 and same.json["evaluations"][0]["evaluation"]["id"] == evaluation["id"]
    other = client.post(
        "/v1/evaluations",
        json={"model_id": text_model, "dataset_id": text_dataset, "config": {"max_length": 64}},
        headers=alice.write,
    )
    assert other.status_code == 201 and other.json["evaluations"][0]["evaluation"]["id"] != evaluation["id"]

    image_model, image_dataset = make_ready(
        client, services, alice, model_task="image-classification", dataset_task="image-classification"
    )
    r = client.post(
        "/v1/evaluations",
        json={"model_id": image_model, "dataset_id": image_dataset, "config": {"max_length": 128}},
        headers=alice.write,
    )
    assert r.status_code == 422
    assert r.json["error"]["details"]["fields"][0]["path"] == "config.max_length"
    assert r.json["error"]["details"]["task"] == "image-classification"
    assert r.json["error"]["message"].startswith("config is invalid for a image-classification model: config.max_length: ")
    bad_value = client.post(
        "/v1/evaluations",
        json={"model_id": text_model, "dataset_id": text_dataset, "config": {"truncation_side": "middle"}},
        headers=alice.write,
    )
    assert bad_value.status_code == 422 and bad_value.json["error"]["details"]["fields"][0]["path"] == "config.truncation_side"
    assert len(client.get("/v1/evaluations", headers=alice.read).json["items"]) == 2  # nothing half-written


def test_a_model_and_a_dataset_of_different_tasks_are_refused(client, services, alice):
    image_model, text_dataset = make_ready(
        client, services, alice, model_task="image-classification", dataset_task="text-classification"
    )
    r = client.post("/v1/evaluations", json={"model_id": image_model, "dataset_id": text_dataset}, headers=alice.write)
    assert r.status_code == 422 and r.json["error"]["code"] == "task_mismatch"
    assert r.json["error"]["details"] == {"model_task": "image-classification", "dataset_task": "text-classification"}
    assert client.get("/v1/evaluations", headers=alice.read).json["items"] == []
