"""The results routes on language-model evaluations, through the real app on the emulators.

Result sets of each kind are written by hand following the contract
(``shared.results.LANGUAGE_MODEL_SCHEMAS``, from ``KIND_PREDICTIONS``), uploaded where the
evaluate worker puts them, and every figure the routes answer is checked against numpy on
the arrays they were written from.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared.entities import Dataset, Evaluation, Model
from shared.storage import evaluation_summary, prediction_shard
from tests.results.conftest import generate, stored_evaluation, upload_result_set
from tests.results.lm_result_sets import _COLUMNS, LMSet, N, write_set


@pytest.fixture
def lab(services, storage, alice, tmp_path):
    """Alice's three language-model datasets (one per shape) and two models' result sets on each."""
    models = []
    for i in range(2):
        model = Model(
            id=Model.new_id(), account=alice.account, name=f"lm-{i}", declared_size=1, content_type="application/zip",
            upload_object="u", status="ready", task="text-generation",
        )  # fmt: skip
        services.store.put(model)
        models.append(model)
    datasets, sets = {}, {}
    for kind in _COLUMNS:
        dataset = Dataset(
            id=Dataset.new_id(), account=alice.account, name=kind.replace("_", "-"), declared_size=1, content_type="application/jsonl",
            upload_object="u", status="ready", task="text-generation", format="jsonl", shape=kind,
        )  # fmt: skip
        services.store.put(dataset)
        datasets[kind] = dataset
        for i, (model, skill) in enumerate(zip(models, (3.0, 0.5) if kind != "generate" else (0.7, 0.4))):
            found = write_set(tmp_path / f"{kind}-{i}", kind, seed=i, skill=skill)
            evaluation = Evaluation(
                id=Evaluation.new_id(), account=alice.account, name=f"{kind.replace('_', '-')}-{i}", model_id=model.id,
                dataset_id=dataset.id, split="test", fingerprint=Evaluation.new_id(), status="complete",
                task="text-generation", config={"kind": kind},
                summary=json.loads((found.directory / "summary.json").read_text()),
            )  # fmt: skip
            services.store.put(evaluation)
            upload_result_set(storage, evaluation.id, found.directory)
            found.evaluation = evaluation
            sets[(kind, i)] = found
    return {"datasets": datasets, "sets": sets, "h": alice.read}


def _results(evaluation: Evaluation) -> str:
    return f"/v1/evaluations/{evaluation.id}/results"


def _all_rows(client, lm: LMSet, h, **params) -> list[dict]:
    rows, token = [], None
    while True:
        query = {"limit": "37", **params} | ({"page_token": token} if token else {})
        r = client.get(_results(lm.evaluation) + "/instances", headers=h, query_string=query)
        assert r.status_code == 200, r.json
        rows += r.json["items"]
        token = r.json["next_page_token"]
        if not token:
            return rows


@pytest.mark.parametrize("kind", list(_COLUMNS))
def test_summary_and_download(client, services, storage, lab, kind):
    lm = lab["sets"][(kind, 0)]
    r = client.get(_results(lm.evaluation), headers=lab["h"])
    assert r.status_code == 200, r.json
    assert r.json["kind"] == kind and r.json["label_names"] is None and r.json["instances"] == N
    assert r.json["truncated"] == sum(lm.columns["truncated"])
    if kind == "multiple_choice":
        assert r.json["acc"] == pytest.approx(lm.array("correct").mean()) and r.json["exact_match"] is None
    r = client.get(_results(lm.evaluation) + "/download", headers=lab["h"])
    assert r.status_code == 200
    assert [f["name"] for f in r.json["files"]] == [f"predictions/part-0000{i}.parquet" for i in range(3)] + ["summary.json"]
    # No summary on the entity: summary.json's, a language model's summary.
    bare = Evaluation(**{**lm.evaluation.model_dump(), "id": Evaluation.new_id(), "summary": None})
    services.store.put(bare)
    upload_result_set(storage, bare.id, lm.directory)
    r = client.get(_results(bare), headers=lab["h"])
    assert r.status_code == 200 and r.json["kind"] == kind and r.json["evaluation_id"] == bare.id


def test_multiple_choice_instances_show_every_choice(client, lab):
    lm = lab["sets"][("multiple_choice", 0)]
    rows = _all_rows(client, lm, lab["h"], order_by="-instance_id")
    assert [row["instance_id"] for row in rows] == sorted(lm.columns["instance_id"], reverse=True)
    by_id = {row["instance_id"]: row for row in rows}
    for i, instance_id in enumerate(lm.columns["instance_id"]):
        row = by_id[instance_id]
        assert row["kind"] == "multiple_choice" and row["prompt"] == lm.columns["prompt"][i]
        assert [(c["index"], c["text"], c["loglikelihood"], c["greedy"]) for c in row["choices"]] == list(
            zip(range(99), lm.columns["choices"][i], lm.columns["choice_loglikelihoods"][i], lm.columns["choice_greedy"][i])
        )
        for name in ("answer", "prediction", "prediction_norm", "correct", "correct_norm", "truncated"):
            assert row[name] == lm.columns[name][i], name
        assert row["output"] is None and row["loglikelihood"] is None
    wrong = _all_rows(client, lm, lab["h"], correct="false")
    assert [row["instance_id"] for row in wrong] == sorted(np.array(lm.columns["instance_id"])[~lm.array("correct")])


def test_generate_and_perplexity_instances(client, lab):
    gen = lab["sets"][("generate", 0)]
    rows = _all_rows(client, gen, lab["h"], correct="true")
    right = {i for i, c in zip(gen.columns["instance_id"], gen.columns["correct"]) if c}
    assert {row["instance_id"] for row in rows} == right and len(rows) == len(right)
    i = gen.columns["instance_id"].index(rows[0]["instance_id"])
    expected = {k: gen.columns[k][i] for k in ("prompt", "output", "extracted", "targets", "correct", "truncated")}
    assert {k: rows[0][k] for k in expected} == expected and rows[0]["choices"] is None

    ppl = lab["sets"][("perplexity", 0)]
    rows = _all_rows(client, ppl, lab["h"])
    assert [row["instance_id"] for row in rows] == sorted(ppl.columns["instance_id"])
    for row in rows:
        i = ppl.columns["instance_id"].index(row["instance_id"])
        got = (row["text_excerpt"], row["loglikelihood"], row["words"], row["bytes"], row["correct"])
        assert got == (ppl.columns["text_excerpt"][i], ppl.columns["loglikelihood"][i], ppl.columns["words"][i], ppl.columns["bytes"][i], None)  # fmt: skip


@pytest.mark.parametrize(
    "kind,params,named",
    [
        ("multiple_choice", {"label": "1"}, "label"),
        ("multiple_choice", {"prediction": "0"}, "prediction"),
        ("generate", {"min_confidence": "0.5"}, "min_confidence"),
        ("generate", {"max_confidence": "0.5", "correct": "true"}, "max_confidence"),
        ("multiple_choice", {"order_by": "-confidence"}, "order_by=-confidence"),
        ("perplexity", {"correct": "true"}, "correct"),
    ],
)
def test_classification_filters_are_refused_by_name(client, lab, kind, params, named):
    lm = lab["sets"][(kind, 0)]
    r = client.get(_results(lm.evaluation) + "/instances", headers=lab["h"], query_string=params)
    assert r.status_code == 422 and r.json["error"]["code"] == "invalid", r.json
    assert r.json["error"]["details"]["filters"] == [named] and named in r.json["error"]["message"]


def test_no_classes_and_no_confusion(client, lab):
    lm = lab["sets"][("generate", 1)]
    for path in ("/classes", "/confusion"):
        r = client.get(_results(lm.evaluation) + path, headers=lab["h"])
        assert r.status_code == 422, r.json
        assert r.json["error"]["message"] == f"evaluation {lm.evaluation.id} has no classes: a text-generation evaluation"


def _bootstrap(cells: dict[str, np.ndarray], counts: np.ndarray | None, metric, samples: int, seed: int) -> tuple[float, float]:
    """The percentile interval drawn directly: multinomial resamples of the cells' counts,
    or (``counts`` None: a cell per instance) counts of instances drawn uniformly."""
    rng = np.random.default_rng(seed)
    if counts is None:
        n = len(next(iter(cells.values())))
        weights = np.stack([np.bincount(draw, minlength=n) for draw in rng.integers(0, n, size=(samples, n))])
    else:
        weights = rng.multinomial(int(counts.sum()), counts / counts.sum(), size=samples)
    values = metric(**{name: weights @ v for name, v in cells.items()}, n=weights.sum(axis=1))
    low, high = np.quantile(values[np.isfinite(values)], [0.025, 0.975])
    return float(low), float(high)


def test_multiple_choice_metrics_equal_numpy_with_seeded_intervals(client, lab):
    lm = lab["sets"][("multiple_choice", 0)]
    url, h = _results(lm.evaluation) + "/metrics", lab["h"]
    r = client.post(url, headers=h, json={"bootstrap": {"samples": 500, "seed": 7}})
    assert r.status_code == 200, r.json
    got = {m["name"]: m for m in r.json["metrics"]}
    assert list(got) == ["acc", "acc_norm"] and r.json["instances"] == N
    correct, correct_norm = lm.array("correct"), lm.array("correct_norm")
    assert got["acc"]["value"] == pytest.approx(correct.mean(), rel=1e-12)
    assert got["acc_norm"]["value"] == pytest.approx(correct_norm.mean(), rel=1e-12)
    # The cells: distinct (correct, correct_norm) pairs in order, with their counts.
    pairs, counts = np.unique(np.stack([correct, correct_norm], axis=1), axis=0, return_counts=True)
    cells = {"hits": pairs[:, 0].astype(float), "hits_norm": pairs[:, 1].astype(float)}
    low, high = _bootstrap(cells, counts, lambda hits, hits_norm, n: hits_norm / n, 500, 7)
    assert (got["acc_norm"]["interval"]["low"], got["acc_norm"]["interval"]["high"]) == pytest.approx((low, high), rel=1e-12)
    again = client.post(url, headers=h, json={"metrics": ["acc_norm", "acc"], "bootstrap": {"samples": 500, "seed": 7}})
    assert again.json["metrics"][0] == got["acc_norm"]
    other = client.post(url, headers=h, json={"metrics": ["acc_norm"], "bootstrap": {"samples": 500, "seed": 8}})
    assert other.json["metrics"][0]["interval"] != got["acc_norm"]["interval"]


def test_perplexity_metrics_equal_numpy_with_seeded_intervals(client, lab):
    lm = lab["sets"][("perplexity", 0)]
    r = client.post(_results(lm.evaluation) + "/metrics", headers=lab["h"], json={"bootstrap": {"samples": 300, "seed": 3}})
    assert r.status_code == 200, r.json
    got = {m["name"]: m for m in r.json["metrics"]}
    ll, words, nbytes = (lm.array(k).astype(float) for k in ("loglikelihood", "words", "bytes"))
    assert got["word_perplexity"]["value"] == pytest.approx(np.exp(-ll.sum() / words.sum()), rel=1e-12)
    assert got["byte_perplexity"]["value"] == pytest.approx(np.exp(-ll.sum() / nbytes.sum()), rel=1e-12)
    assert got["bits_per_byte"]["value"] == pytest.approx(-ll.sum() / nbytes.sum() / np.log(2), rel=1e-12)
    # One cell per instance, in instance id order, each drawn with weight 1/N.
    order = np.argsort(lm.array("instance_id"))
    cells = {"loglikelihood": ll[order], "bytes": nbytes[order]}
    low, high = _bootstrap(cells, None, lambda loglikelihood, bytes, n: -loglikelihood / bytes / np.log(2), 300, 3)
    interval = got["bits_per_byte"]["interval"]
    assert (interval["low"], interval["high"]) == pytest.approx((low, high), rel=1e-12)
    assert interval["low"] < got["bits_per_byte"]["value"] < interval["high"]


def test_a_metric_of_another_family_or_kind_is_refused(client, services, storage, lab, tmp_path):
    h = lab["h"]
    gen = lab["sets"][("generate", 0)].evaluation
    r = client.post(_results(gen) + "/metrics", headers=h, json={"metrics": ["exact_match"]})
    assert r.status_code == 200 and r.json["metrics"][0]["value"] == pytest.approx(
        lab["sets"][("generate", 0)].array("correct").mean()
    )
    for wrong in (["acc"], ["accuracy", "exact_match"], [{"name": "f_beta", "beta": 2}]):
        r = client.post(_results(gen) + "/metrics", headers=h, json={"metrics": wrong})
        assert r.status_code == 422, r.json
        assert r.json["error"]["details"]["available"] == ["exact_match"]
        assert r.json["error"]["details"]["metrics"] == [wrong[0] if isinstance(wrong[0], str) else "f_beta"]
    # and the other way round: a classification has no acc
    g = generate(tmp_path / "images", n=50, classes=3)
    image = stored_evaluation(services.store, account=gen.account, summary={"label_names": g.label_names})
    upload_result_set(storage, image.id, g.directory)
    r = client.post(_results(image) + "/metrics", headers=h, json={"metrics": ["acc", "accuracy"]})
    assert r.status_code == 422 and r.json["error"]["details"]["metrics"] == ["acc"]
    assert "accuracy" in r.json["error"]["details"]["available"]


@pytest.mark.parametrize("kind,metric,pick", [("multiple_choice", "acc", "prediction"), ("generate", "exact_match", "output")])
def test_compare_two_language_models(client, lab, kind, metric, pick):
    a, b = lab["sets"][(kind, 0)], lab["sets"][(kind, 1)]
    r = client.get("/v1/evaluations/compare", headers=lab["h"], query_string={"a": a.evaluation.id, "b": b.evaluation.id})
    assert r.status_code == 200, r.json
    ra, rb = a.array("correct"), b.array("correct")  # both in instance id order
    assert r.json["metric"] == metric and r.json["instances"] == N
    assert r.json["only_a_correct"]["count"] == int((ra & ~rb).sum())
    assert r.json["only_b_correct"]["count"] == int((~ra & rb).sum())
    assert r.json["both_correct"] == int((ra & rb).sum()) and r.json["both_wrong"] == int((~ra & ~rb).sum())
    assert r.json["accuracy_a"] == pytest.approx(ra.mean()) and r.json["accuracy_b"] == pytest.approx(rb.mean())
    assert r.json["agreement"] == pytest.approx(np.mean(np.array(a.columns[pick]) == np.array(b.columns[pick])))
    from scipy import stats

    discordant = int((ra ^ rb).sum())
    assert r.json["mcnemar"]["p_value"] == pytest.approx(stats.binomtest(int((ra & ~rb).sum()), discordant).pvalue)


def test_what_cannot_be_compared_is_refused(client, services, lab):
    h, sets = lab["h"], lab["sets"]
    a, b = sets[("perplexity", 0)].evaluation, sets[("perplexity", 1)].evaluation
    r = client.get("/v1/evaluations/compare", headers=h, query_string={"a": a.id, "b": b.id})
    assert r.status_code == 422 and "no per-instance verdict" in r.json["error"]["message"]
    # two kinds on one dataset split (as if a dataset had served both)
    mc = sets[("multiple_choice", 0)].evaluation
    gen = Evaluation(**{**sets[("generate", 0)].evaluation.model_dump(), "dataset_id": mc.dataset_id})
    services.store.put(gen)
    r = client.get("/v1/evaluations/compare", headers=h, query_string={"a": mc.id, "b": gen.id})
    assert r.status_code == 422 and r.json["error"]["details"]["b"] == {"task": "text-generation", "kind": "generate"}


@pytest.mark.parametrize(
    "kind,headline,best", [("multiple_choice", "acc_norm", 0), ("generate", "exact_match", 0), ("perplexity", "bits_per_byte", 0)]
)
def test_leaderboard_ranks_by_the_shapes_headline(client, lab, kind, headline, best):
    dataset = lab["datasets"][kind]
    r = client.get(f"/v1/datasets/{dataset.id}/leaderboard", headers=lab["h"])
    assert r.status_code == 200, r.json
    assert r.json["metric"] == headline and r.json["higher_is_better"] is (headline != "bits_per_byte")
    values = [lab["sets"][(kind, i)].evaluation.summary[headline] for i in (0, 1)]
    assert [item["value"] for item in r.json["items"]] == sorted(values, reverse=headline != "bits_per_byte")
    assert r.json["items"][0]["evaluation_id"] == lab["sets"][(kind, best)].evaluation.id
    r = client.get(f"/v1/datasets/{dataset.id}/leaderboard", headers=lab["h"], query_string={"metric": "accuracy"})
    assert r.status_code == 200 and r.json["metric"] == "accuracy" and r.json["items"] == []


def test_an_off_contract_language_model_result_set_is_a_409(client, services, storage, lab):
    lm = lab["sets"][("generate", 0)]
    broken = Evaluation(**{**lm.evaluation.model_dump(), "id": Evaluation.new_id()})
    services.store.put(broken)
    table = pq.read_table(lm.directory / "part-00000.parquet").drop_columns(["extracted"])
    storage.write_bytes(prediction_shard(broken.id, 0), _parquet(table))
    storage.write_bytes(evaluation_summary(broken.id), b"{}", content_type="application/json")
    r = client.get(_results(broken) + "/instances", headers=lab["h"])
    assert r.status_code == 409 and r.json["error"]["code"] == "result_set_corrupt"
    assert r.json["error"]["details"]["columns"] == {"extracted": {"expected": "string", "found": None}}


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def test_instance_resamples_are_multinomial_and_bounded():
    """A cell per instance is resampled by uniform draws: the multinomial's distribution
    (every weight's mean 1, variance 1 - 1/n, each sample summing to n), at a bounded cost."""
    from functions.results.metrics import MAX_ROW_DRAWS, Gathered, bootstrap_rows
    from shared.errors import Invalid
    from shared.results_api import BootstrapSpec

    n = 50
    weights = np.concatenate(list(bootstrap_rows(n, samples=20_000, seed=1, block=3000)))
    assert weights.shape == (20_000, n) and (weights.sum(axis=1) == n).all()
    assert weights.mean() == pytest.approx(1.0, abs=0.01)
    assert weights.var(axis=0).mean() == pytest.approx(1 - 1 / n, rel=0.02)
    gathered = Gathered(np.ones(MAX_ROW_DRAWS // 1000 + 1, dtype=np.int64), lambda w: None, per_row=True)
    with pytest.raises(Invalid) as e:
        gathered.resamples(BootstrapSpec(samples=1000))
    assert e.value.details["max_samples"] == 999


def test_a_row_whose_choices_do_not_line_up_is_a_409(client, services, storage, lab):
    lm = lab["sets"][("multiple_choice", 0)]
    broken = Evaluation(**{**lm.evaluation.model_dump(), "id": Evaluation.new_id()})
    services.store.put(broken)
    table = pq.read_table(lm.directory / "part-00000.parquet")
    greedy = table.column("choice_greedy").to_pylist()
    greedy[0] = greedy[0][:-1]
    table = table.set_column(table.schema.get_field_index("choice_greedy"), "choice_greedy", pa.array(greedy))
    storage.write_bytes(prediction_shard(broken.id, 0), _parquet(table))
    r = client.get(_results(broken) + "/instances", headers=lab["h"], query_string={"limit": "1000"})
    assert r.status_code == 409 and r.json["error"]["code"] == "result_set_corrupt", r.json
    assert r.json["error"]["details"]["instance_id"] == table.column("instance_id")[0].as_py()
