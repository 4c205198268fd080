"""infra/gcp/index.yaml serves every query the code makes, as production Datastore demands.

The shapes come from the Datastore layer itself, never from a list kept by hand:
- every query ``Store.list`` can build: each kind, each combination of the equality filters
  the kind indexes, each sort order the layer offers, run through the real ``Store.list``
  up to the point where it would reach the network;
- every shape recorded in ``shared.store.QUERY_SHAPES`` by whatever code ran earlier in this
  process (the store also refuses an unserved query at the moment it is made, in every test
  that uses the ``store`` fixture). That check is marked ``last``: it runs after every other
  test of the session, whatever order they were collected in.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from shared import store as store_module
from shared.entities import KINDS, Account
from shared.events import Event
from shared.indexes import QueryShape, covers, load_indexes
from shared.settings import Settings
from shared.store import ANY_ACCOUNT, Store
from shared.webhooks import Webhook, WebhookDelivery

ROOT = Path(__file__).resolve().parents[2]
INDEX_YAML = ROOT / "infra" / "gcp" / "index.yaml"
ORDERS = ("-created_at", "created_at", None)
# Accounts are read by key (API keys name their account), never listed.
LISTED_KINDS = [cls for name, cls in sorted(KINDS.items()) if cls is not Account]
# Records listed only in the shapes their own code makes (recorded by the other tests).
INDEXED_KINDS = {**KINDS, **{cls.kind: cls for cls in (Event, Webhook, WebhookDelivery)}}


class _Built(Exception):
    """Raised where Store.list would go to the network: the query is built by then."""


class ShapeRecordingStore(Store):
    """The real Store, stopped just after it has checked a query's shape."""

    def __init__(self):
        # Nothing listens there, and nothing is sent: every query stops before the network.
        settings = Settings(project="assay-index-check", datastore_emulator_host="127.0.0.1:9")
        store = Store.from_settings(settings)
        super().__init__(store.rpc, indexes=load_indexes(INDEX_YAML))
        self.shapes: list[QueryShape] = []

    def _check_index(self, shape: QueryShape) -> None:
        self.shapes.append(shape)
        super()._check_index(shape)  # raises MissingIndex when index.yaml does not serve it
        raise _Built


def test_index_yaml_is_well_formed():
    doc = yaml.safe_load(INDEX_YAML.read_text())
    assert set(doc) == {"indexes"}
    seen = set()
    for index in doc["indexes"]:
        assert set(index) <= {"kind", "properties", "ancestor"}
        cls = INDEXED_KINDS[index["kind"]]
        props = tuple((p["name"], p.get("direction", "asc")) for p in index["properties"])
        assert len(props) >= 2, "a single-property index is built in; declaring it is an error"
        for name, direction in props:
            assert name in cls.indexed, f"{cls.kind}.{name} is excluded from indexes, so no index can hold it"
            assert direction in {"asc", "desc"}
        assert (index["kind"], props) not in seen, f"duplicate index {index}"
        seen.add((index["kind"], props))


def test_every_query_the_store_can_build_is_served():
    store = ShapeRecordingStore()
    built = 0
    for cls in LISTED_KINDS:
        filterable = sorted(cls.indexed - {"account", "created_at", "label_pairs"})
        for account, with_labels, order in itertools.product(("acc_x", ANY_ACCOUNT), (False, True), ORDERS):
            for n in range(len(filterable) + 1):
                for names in itertools.combinations(filterable, n):
                    filters = {name: "v" for name in names}
                    labels = {"team": "a", "stage": "b"} if with_labels else None
                    with pytest.raises(_Built):
                        store.list(cls, account=account, filters=filters, labels=labels, order=order)
                    built += 1
    assert built == len(store.shapes) > 100


@pytest.mark.last
def test_every_recorded_query_is_served():
    recorded = set(store_module.QUERY_SHAPES)
    if not recorded:
        pytest.skip("no query was made earlier in this session: run it with the tests that make them")
    indexes = load_indexes(INDEX_YAML)
    assert [shape for shape in recorded if not covers(indexes, shape)] == []


def test_the_check_knows_an_unserved_query():
    indexes = load_indexes(INDEX_YAML)
    assert not covers(indexes, QueryShape.of("Evaluation", ["status"], ["-progress"]))
    assert covers(indexes, QueryShape.of("Evaluation", ["dataset_id", "split", "status"], []))
    assert covers(indexes, QueryShape.of("Evaluation", ["status"], ["created_at"]))
