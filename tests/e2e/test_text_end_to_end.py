"""Text classification end to end on the real local stack, through the same API, SDK, CLI
and result routes as images: upload a tiny BERT and a JSON Lines dataset, evaluate with a
text config, query every result route."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from tests.e2e.stack_cli import cli
from tests.workers.text_fixtures import LABEL_NAMES, build_text_classifier, labelled, write_csv, write_jsonl

pytestmark = pytest.mark.slow
TEXT = "text-classification"


@pytest.fixture(scope="module")
def evaluated(client, tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    model_dir = build_text_classifier(root / "tiny-bert")
    columns = labelled(300, seed=5, pairs=False)
    columns["text"][7] = "é" * 400  # longer than the excerpt; truncated by max_length too
    data = write_jsonl(root / "reviews.jsonl", columns)
    model = client.models.upload(model_dir, name="tiny-bert", task=TEXT, wait=True)
    assert (model.status, model.task, model.architecture) == ("ready", TEXT, "BertForSequenceClassification"), model.message
    dataset = client.datasets.upload(data, name="reviews", task=TEXT, wait=True)
    assert (dataset.status, dataset.format, dataset.splits) == ("ready", "jsonl", {"train": 300}), dataset.message
    [handle] = client.evaluations.create(model.id, dataset.id, config={"max_length": 24, "truncation_side": "left", "top_k": 2})
    done = handle.wait(timeout_s=300)
    assert done.status == "complete", (done.reason, done.message)
    return model, dataset, handle, columns


def test_a_text_evaluation_answers_on_every_result_route(client, evaluated):
    model, dataset, handle, columns = evaluated
    rows = list(client.evaluations.instances(handle.id))
    assert len(rows) == 300
    by_id = {int(r.instance_id.rsplit("-", 1)[1]): r for r in rows}  # JSON Lines rows: <split>-<position>
    assert by_id[7].text_excerpt == "é" * 200
    assert all(by_id[i].text_excerpt == columns["text"][i][:200] for i in by_id)
    assert all(len(r.top_k) == 2 for r in rows)
    labels = np.array([LABEL_NAMES.index(by_id[i].label) for i in range(300)])
    predictions = np.array([LABEL_NAMES.index(by_id[i].prediction) for i in range(300)])
    assert labels.tolist() == columns["label"]

    summary = client.evaluations.summary(handle.id)
    assert summary["instances"] == 300
    assert summary["accuracy"] == pytest.approx(accuracy_score(labels, predictions))
    assert summary["f1_macro"] == pytest.approx(f1_score(labels, predictions, average="macro", zero_division=0))
    assert client.evaluations.confusion(handle.id).matrix == confusion_matrix(labels, predictions, labels=range(3)).tolist()
    assert [c.label for c in client.evaluations.classes(handle.id).classes] == LABEL_NAMES
    assert client.evaluations.downloads(handle.id).files
    board = client.evaluations.leaderboard(dataset.id, split="train", metric="accuracy")
    assert [e.evaluation_id for e in board.items] == [handle.id]
    evaluation = client.evaluations.get(handle.id)
    assert evaluation.task == TEXT and evaluation.config["truncation_side"] == "left"


def test_the_same_texts_as_csv_give_the_same_predictions_and_compare_works(client, evaluated, tmp_path):
    model, dataset, handle, columns = evaluated
    csv_dataset = client.datasets.upload(write_csv(tmp_path / "reviews.csv", columns), name="reviews-csv", task=TEXT, wait=True)
    assert csv_dataset.status == "ready", csv_dataset.message
    config = {"max_length": 24, "truncation_side": "left", "top_k": 2}
    [from_csv] = client.evaluations.create(model.id, csv_dataset.id, config=config)
    assert from_csv.wait(timeout_s=300).status == "complete"

    def verdicts(evaluation_id):
        return {r.instance_id: (r.prediction, round(r.confidence, 5)) for r in client.evaluations.instances(evaluation_id)}

    assert verdicts(from_csv.id) == verdicts(handle.id)
    [longer] = client.evaluations.create(model.id, dataset.id, config={**config, "max_length": 64})
    assert longer.outcome == "created" and longer.wait(timeout_s=300).status == "complete"
    compared = client.evaluations.compare(handle.id, longer.id)
    assert compared.instances == 300 and 0 <= compared.agreement <= 1


def test_the_cli_lists_the_tasks_and_refuses_a_config_the_task_does_not_take(stack, evaluated):
    model, dataset, _, _ = evaluated
    listed = cli(stack, "tasks")
    assert listed.returncode == 0 and "text-classification" in listed.stdout and "image-classification" in listed.stdout
    described = json.loads(cli(stack, "--json", "tasks").stdout)
    text = next(t for t in described if t["name"] == TEXT)
    assert text["dataset"]["formats"] == ["parquet", "jsonl", "csv"] and "max_length" in text["config_schema"]["properties"]
    refused = cli(stack, "evaluate", model.id, dataset.id, "--config", '{"max_length": "long"}')
    assert refused.returncode != 0 and "config.max_length" in refused.stderr + refused.stdout
