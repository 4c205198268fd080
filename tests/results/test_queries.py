"""Per-instance rows, per-class metrics and the confusion matrix against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from functions.results import queries
from functions.results.resultset import opened
from shared.errors import Invalid, InvalidRequest
from shared.results_api import InstancesQuery
from tests.results.conftest import generate


def test_confusion_equals_sklearn(generated):
    with opened(generated.directory, generated.label_names) as rs:
        result = queries.confusion(rs)
    expected = confusion_matrix(generated.labels, generated.predictions, labels=range(len(generated.label_names)))
    assert result.labels == generated.label_names
    assert np.array_equal(np.array(result.matrix), expected)


def test_classes_equal_sklearn(tmp_path):
    from tests.results.conftest import generate

    # class 6 never appears as a label and is never predicted: zero_division=0 everywhere
    labels = np.random.default_rng(3).integers(0, 6, 1500)
    g = generate(tmp_path / "r", n=1500, classes=7, labels=labels, skill=0.8)
    with opened(g.directory, g.label_names) as rs:
        result = queries.classes(rs)
    p, r, f, s = precision_recall_fscore_support(g.labels, g.predictions, labels=range(7), zero_division=0)
    assert result.instances == 1500
    assert [c.label for c in result.classes] == g.label_names
    assert np.allclose([c.precision for c in result.classes], p)
    assert np.allclose([c.recall for c in result.classes], r)
    assert np.allclose([c.f1 for c in result.classes], f)
    assert [c.support for c in result.classes] == s.tolist()
    assert [c.predicted for c in result.classes] == np.bincount(g.predictions, minlength=7).tolist()


def _all_pages(rs, **query):
    rows, token, pages = [], None, 0
    while True:
        page = queries.instances(rs, InstancesQuery(page_token=token, **query))
        rows.extend(page.items)
        pages += 1
        token = page.next_page_token
        if token is None:
            return rows, pages


@pytest.mark.parametrize("order_by", ["instance_id", "-instance_id", "confidence", "-confidence"])
def test_pagination_returns_every_row_once_in_order(generated, order_by):
    with opened(generated.directory, generated.label_names) as rs:
        rows, pages = _all_pages(rs, order_by=order_by, limit=173)
    ids = [r.instance_id for r in rows]
    assert len(ids) == len(set(ids)) == 2000
    assert pages == -(-2000 // 173)
    confidence = generated.scores.max(axis=1)
    by_id = dict(zip(generated.instance_ids, confidence))
    if order_by.endswith("instance_id"):
        assert ids == sorted(ids, reverse=order_by.startswith("-"))
    else:
        keys = [(by_id[i], i) for i in ids]
        assert keys == sorted(keys, reverse=order_by.startswith("-"))


def test_pagination_with_tied_confidences(tmp_path):
    from tests.results.conftest import generate

    g = generate(tmp_path / "r", n=300, classes=3)
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for path in g.directory.glob("part-*.parquet"):  # three distinct confidences only
        table = pq.read_table(path)
        rounded = pc.cast(pc.round(table["confidence"], 1), "float32")
        pq.write_table(table.set_column(3, "confidence", rounded), path)
    with opened(g.directory, g.label_names) as rs:
        rows, _ = _all_pages(rs, order_by="-confidence", limit=7)
    assert sorted(r.instance_id for r in rows) == sorted(g.instance_ids)


def test_filters_match_numpy(generated):
    g = generated
    names = g.label_names
    with opened(g.directory, names) as rs:
        rows, _ = _all_pages(
            rs, label=names[2], correct=False, min_confidence=0.2, max_confidence=0.6, order_by="confidence", limit=50
        )
        by_index, _ = _all_pages(rs, label="2", prediction=names[4], limit=1000)
    confidence = g.scores.max(axis=1).astype(np.float32)
    keep = (g.labels == 2) & (g.predictions != 2) & (confidence >= 0.2) & (confidence <= 0.6)
    assert sorted(r.instance_id for r in rows) == sorted(g.instance_ids[keep])
    assert all(r.label == names[2] and not r.correct for r in rows)
    keep = (g.labels == 2) & (g.predictions == 4)
    assert sorted(r.instance_id for r in by_index) == sorted(g.instance_ids[keep])


def test_rows_carry_names_and_top_k(generated):
    g = generated
    with opened(g.directory, g.label_names) as rs:
        page = queries.instances(rs, InstancesQuery(limit=1))
    row = page.items[0]
    i = int(np.flatnonzero(g.instance_ids == row.instance_id)[0])
    assert row.label == g.label_names[g.labels[i]] and row.label_index == g.labels[i]
    assert row.prediction_index == g.predictions[i]
    assert [t.class_index for t in row.top_k] == np.argsort(-g.scores[i])[: g.top_k].tolist()
    assert row.top_k[0].score == pytest.approx(row.confidence)
    assert row.label_score == pytest.approx(g.scores[i, g.labels[i]], rel=1e-6)


def test_bad_filters_and_tokens(generated):
    with opened(generated.directory, generated.label_names) as rs:
        with pytest.raises(Invalid):
            queries.instances(rs, InstancesQuery(label="no-such-class"))
        with pytest.raises(Invalid):
            queries.instances(rs, InstancesQuery(prediction="99"))
        with pytest.raises(InvalidRequest):
            queries.instances(rs, InstancesQuery(page_token="not a token"))
        token = queries.instances(rs, InstancesQuery(limit=5)).next_page_token
        with pytest.raises(InvalidRequest):  # made for another order
            queries.instances(rs, InstancesQuery(limit=5, order_by="confidence", page_token=token))
        with pytest.raises(InvalidRequest):
            queries.instances(rs, InstancesQuery(limit=5, correct=True, page_token=token))
        # another limit with the same filters is fine
        assert queries.instances(rs, InstancesQuery(limit=9, page_token=token)).items


def test_a_text_result_set_shows_each_instances_excerpt(tmp_path):
    """Text tasks add a ``text_excerpt`` column; the instances route shows it, and a result
    set without it (images) shows none."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    g = generate(tmp_path / "text", n=50, classes=3, shards=1)
    path = g.directory / "part-00000.parquet"
    table = pq.read_table(path)
    excerpts = [f"text of {i} — ünïcode" for i in table.column("instance_id").to_pylist()]
    pq.write_table(table.append_column("text_excerpt", pa.array(excerpts, pa.string())), path)
    with opened(g.directory, g.label_names) as rs:
        page = queries.instances(rs, InstancesQuery(limit=50))
    assert {row.instance_id: row.text_excerpt for row in page.items} == dict(
        zip(table.column("instance_id").to_pylist(), excerpts)
    )
    with opened(generate(tmp_path / "images", n=10, classes=3).directory, g.label_names) as rs:
        assert {row.text_excerpt for row in queries.instances(rs, InstancesQuery(limit=10)).items} == {None}
