"""The local stack's Datastore snapshot (devstack/snapshot.py) on the real emulator."""

from __future__ import annotations

import pytest

from devstack import snapshot
from shared.admin import create_account
from shared.entities import Account, ApiKey, Model
from shared.events import Event
from shared.store import ANY_ACCOUNT, Store


def make_model(account: str, name: str, labels: dict[str, str]) -> Model:
    mid = Model.new_id()
    return Model(
        id=mid,
        account=account,
        name=name,
        labels=labels,
        declared_size=10,
        content_type="application/zip",
        upload_object=f"uploads/models/{mid}/model.zip",
    )


def test_a_snapshot_restores_every_entity_exactly_after_a_wipe(store: Store, emulators, tmp_path):
    account, _ = create_account(store, "acme")
    models = [make_model(account=account.id, name=f"m-{i}", labels={"n": str(i)}) for i in range(120)]
    store.run_in_transaction(lambda txn: [txn.put(m) for m in models])
    path = tmp_path / "datastore.snapshot"
    events = store.list(Event, account=account.id, filters={"entity_id": models[7].id}, order="created_at").items
    assert len(events) == 1  # every entity created has its event, saved with the rest
    saved = snapshot.save(store.rpc, path, page_size=50)
    assert saved >= 120 + 2 + 120  # the models, the account, its key and their events: several pages
    before = {m.id: m for m in store.iterate(Model, account=account.id)}

    emulators.reset_datastore()
    assert store.find(Account, account.id, account=ANY_ACCOUNT) is None
    assert snapshot.restore(store.rpc, path, batch_size=50) == saved
    assert store.list(Event, account=account.id, filters={"entity_id": models[7].id}, order="created_at").items == events
    after = {m.id: m for m in store.iterate(Model, account=account.id)}
    assert after == before
    assert store.get(Account, account.id, account=ANY_ACCOUNT) == account
    assert len(list(store.iterate(ApiKey, account=account.id))) == 1
    assert store.list(Model, account=account.id, labels={"n": "7"}).items == [before[models[7].id]]  # indexes rebuilt


def test_a_truncated_snapshot_is_refused_and_a_failed_save_keeps_the_old_one(store: Store, tmp_path):
    create_account(store, "acme")
    path = tmp_path / "datastore.snapshot"
    snapshot.save(store.rpc, path)
    whole = path.read_bytes()
    (tmp_path / "cut").write_bytes(whole[:-3])
    with pytest.raises(ValueError, match="truncated"):
        snapshot.restore(store.rpc, tmp_path / "cut")

    class Down:
        project, namespace = store.rpc.project, store.rpc.namespace

        def run_query(self, query):
            raise ConnectionError("emulator gone")

    with pytest.raises(ConnectionError):
        snapshot.save(Down(), path)
    assert path.read_bytes() == whole
