"""Language models through the API: a dataset declares its shape at upload, and an
evaluation's kind follows it (a config naming another kind, or a few-shot split the
dataset lacks, is a 422 before anything is written)."""

from __future__ import annotations

from conftest import DATASET
from test_api_tasks import make_ready

from shared.entities import Dataset, Evaluation
from shared.store import ANY_ACCOUNT

LM = "text-generation"


def test_a_language_model_dataset_declares_its_shape(client, services, alice):
    missing = client.post("/v1/datasets", json={**DATASET, "task": LM}, headers=alice.write)
    assert missing.status_code == 422
    assert "declares its shape, one of ['multiple_choice', 'generate', 'perplexity']" in str(missing.json["error"]["details"])
    unknown = client.post("/v1/datasets", json={**DATASET, "task": LM, "shape": "essay"}, headers=alice.write)
    assert unknown.status_code == 422 and unknown.json["error"]["details"]["fields"][0]["path"] == "shape"
    for_images = client.post("/v1/datasets", json={**DATASET, "shape": "generate"}, headers=alice.write)
    assert for_images.status_code == 422 and "has one shape" in str(for_images.json["error"]["details"])
    assert client.get("/v1/datasets", headers=alice.read).json["items"] == []  # nothing half-written

    made = client.post("/v1/datasets", json={**DATASET, "task": LM, "shape": "generate", "format": "jsonl"}, headers=alice.write)
    assert made.status_code == 201, made.json
    view = made.json["dataset"]
    assert (view["task"], view["shape"], view["format"]) == (LM, "generate", "jsonl")
    stored = services.store.get(Dataset, view["id"], account=ANY_ACCOUNT)
    assert stored.shape == "generate"
    assert client.get(f"/v1/datasets/{view['id']}", headers=alice.read).json["shape"] == "generate"


def test_the_openapi_document_says_which_tasks_take_a_shape(client):
    schema = client.get("/v1/openapi.json").json["components"]["schemas"]["CreateDataset"]
    rules = {rule["if"].get("properties", {}).get("task", {}).get("const"): rule["then"] for rule in schema["allOf"]}
    assert rules[LM]["required"] == ["shape"]
    assert rules[LM]["properties"]["shape"] == {"enum": ["multiple_choice", "generate", "perplexity"]}
    assert rules["text-classification"]["properties"]["shape"] == {"type": "null"}


def test_an_evaluations_kind_follows_its_datasets_shape(client, services, alice):
    model, dataset = make_ready(
        client, services, alice, model_task=LM, dataset_task=LM, shape="generate", splits={"test": 5, "train": 9}
    )
    r = client.post(
        "/v1/evaluations",
        json={"model_id": model, "dataset_id": dataset, "splits": ["test"], "config": {"max_new_tokens": 16}},
        headers=alice.write,
    )
    assert r.status_code == 201, r.json
    evaluation = r.json["evaluations"][0]["evaluation"]
    assert evaluation["task"] == LM and evaluation["config"]["kind"] == "generate"
    assert evaluation["config"]["max_new_tokens"] == 16 and evaluation["config"]["batch_size"] == 32
    # Naming the kind the dataset has is the same evaluation; another batch size too.
    same = client.post(
        "/v1/evaluations",
        json={
            "model_id": model,
            "dataset_id": dataset,
            "splits": ["test"],
            "config": {"kind": "generate", "max_new_tokens": 16, "batch_size": 3},
        },
        headers=alice.write,
    )
    assert same.status_code == 200 and same.json["evaluations"][0]["evaluation"]["id"] == evaluation["id"]

    wrong_kind = client.post(
        "/v1/evaluations",
        json={"model_id": model, "dataset_id": dataset, "config": {"kind": "multiple_choice"}},
        headers=alice.write,
    )
    assert wrong_kind.status_code == 422 and wrong_kind.json["error"]["code"] == "shape_mismatch"
    assert wrong_kind.json["error"]["details"]["fields"][0]["path"] == "config.kind"

    no_such_split = client.post(
        "/v1/evaluations",
        json={"model_id": model, "dataset_id": dataset, "config": {"num_fewshot": 2, "fewshot_split": "dev"}},
        headers=alice.write,
    )
    assert no_such_split.status_code == 422
    assert no_such_split.json["error"]["details"]["fields"][0]["path"] == "config.fewshot_split"
    assert "no split dev" in no_such_split.json["error"]["message"]

    no_split_named = client.post(
        "/v1/evaluations",
        json={"model_id": model, "dataset_id": dataset, "config": {"num_fewshot": 2}},
        headers=alice.write,
    )
    assert no_split_named.status_code == 422 and "fewshot_split" in no_split_named.json["error"]["message"]
    stored = list(services.store.iterate(Evaluation, account=ANY_ACCOUNT, filters={"dataset_id": dataset}, order=None))
    assert [e.id for e in stored] == [evaluation["id"]]  # nothing half-written

    fewshot = client.post(
        "/v1/evaluations",
        json={
            "model_id": model,
            "dataset_id": dataset,
            "splits": ["test"],
            "config": {"num_fewshot": 2, "fewshot_split": "train"},
        },
        headers=alice.write,
    )
    assert fewshot.status_code == 201 and fewshot.json["evaluations"][0]["evaluation"]["id"] != evaluation["id"]


def test_an_image_config_on_a_language_model_names_the_field(client, services, alice):
    model, dataset = make_ready(client, services, alice, model_task=LM, dataset_task=LM, shape="multiple_choice")
    r = client.post(
        "/v1/evaluations", json={"model_id": model, "dataset_id": dataset, "config": {"top_k": 3}}, headers=alice.write
    )
    assert r.status_code == 422 and r.json["error"]["details"]["fields"][0]["path"] == "config.top_k"
    assert r.json["error"]["details"]["task"] == LM
