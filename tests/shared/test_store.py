"""The Datastore layer on the real emulator: transitions, races, paging, tenancy."""

from __future__ import annotations

import threading

import pytest

from shared.entities import (
    ARTIFACT_TRANSITIONS,
    EVALUATION_TRANSITIONS,
    ArtifactStatus,
    Evaluation,
    EvaluationStatus,
    InferenceConfig,
    Model,
    evaluation_fingerprint,
)
from shared.errors import InvalidRequest, NotFound, TransitionConflict
from shared.store import ANY_ACCOUNT, MissingIndex, Store


def make_model(account="acc_a", status=ArtifactStatus.awaiting_upload, **kw) -> Model:
    mid = Model.new_id()
    fields = dict(
        id=mid,
        account=account,
        name=kw.pop("name", "m"),
        status=status,
        declared_size=10,
        content_type="application/zip",
        upload_object=f"uploads/models/{mid}/model.zip",
    )
    fields.update(kw)
    return Model(**fields)


def make_evaluation(account="acc_a", status=EvaluationStatus.waiting, **kw) -> Evaluation:
    config = InferenceConfig()
    fp = evaluation_fingerprint(model_id="mdl_x", dataset_id="dst_y", split=kw.get("split", "test"), config=config)
    return Evaluation(
        id=Evaluation.new_id(),
        account=account,
        name=kw.pop("name", "e"),
        status=status,
        model_id="mdl_x",
        dataset_id="dst_y",
        split=kw.pop("split", "test"),
        fingerprint=fp,
        **kw,
    )


ARTIFACT_PAIRS = [(a, b) for a in ArtifactStatus for b in ArtifactStatus]
EVALUATION_PAIRS = [(a, b) for a in EvaluationStatus for b in EvaluationStatus]


@pytest.mark.parametrize("source,target", ARTIFACT_PAIRS, ids=[f"{a}->{b}" for a, b in ARTIFACT_PAIRS])
def test_every_artifact_transition_is_allowed_or_refused_as_written(store: Store, source, target):
    model = make_model(status=source)
    store.put(model)
    if target in ARTIFACT_TRANSITIONS[source]:
        out = store.transition(Model, model.id, account="acc_a", expected=source, to=target, reason="r")
        assert out.status == target and out.reason == "r"
        assert store.get(Model, model.id, account="acc_a").status == target
    else:
        with pytest.raises(TransitionConflict):
            store.transition(Model, model.id, account="acc_a", expected=source, to=target)
        assert store.get(Model, model.id, account="acc_a").status == source


@pytest.mark.parametrize("source,target", EVALUATION_PAIRS, ids=[f"{a}->{b}" for a, b in EVALUATION_PAIRS])
def test_every_evaluation_transition_is_allowed_or_refused_as_written(store: Store, source, target):
    evaluation = make_evaluation(status=source)
    store.put(evaluation)
    allowed = target in EVALUATION_TRANSITIONS[source]
    if allowed:
        store.transition(Evaluation, evaluation.id, account="acc_a", expected=source, to=target)
    else:
        with pytest.raises(TransitionConflict):
            store.transition(Evaluation, evaluation.id, account="acc_a", expected=source, to=target)
    assert store.get(Evaluation, evaluation.id, account="acc_a").status == (target if allowed else source)


def test_transition_from_an_unexpected_status_is_a_conflict_and_changes_nothing(store: Store):
    model = make_model(status=ArtifactStatus.ready)
    store.put(model)
    with pytest.raises(TransitionConflict) as info:
        store.transition(Model, model.id, account="acc_a", expected="uploaded", to="verifying")
    assert info.value.current == "ready"
    assert store.get(Model, model.id, account="acc_a").status == "ready"


def test_two_threads_racing_one_transition_exactly_one_wins(store: Store):
    model = make_model(status=ArtifactStatus.uploaded)
    store.put(model)
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def claim(owner: str):
        barrier.wait()
        try:
            store.transition(Model, model.id, account=ANY_ACCOUNT, expected="uploaded", to="verifying", lease_owner=owner)
            outcomes.append(owner)
        except TransitionConflict as e:
            outcomes.append(e)

    threads = [threading.Thread(target=claim, args=(f"daemon-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    winners = [o for o in outcomes if isinstance(o, str)]
    losers = [o for o in outcomes if isinstance(o, TransitionConflict)]
    assert len(winners) == 1 and len(losers) == 1
    assert losers[0].current == "verifying"
    assert store.get(Model, model.id, account="acc_a").lease_owner == winners[0]


def test_check_precondition_guards_a_stale_attempt(store: Store):
    evaluation = make_evaluation(status=EvaluationStatus.admitted, attempts=2)
    store.put(evaluation)
    with pytest.raises(TransitionConflict):
        store.transition(
            Evaluation, evaluation.id, account=ANY_ACCOUNT, expected="admitted", to="running", check=lambda e: e.attempts == 1
        )
    out = store.transition(
        Evaluation, evaluation.id, account=ANY_ACCOUNT, expected="admitted", to="running", check=lambda e: e.attempts == 2
    )
    assert out.status == "running"


def test_update_changes_fields_only_while_status_is_expected(store: Store):
    evaluation = make_evaluation(status=EvaluationStatus.running)
    store.put(evaluation)
    out = store.update(Evaluation, evaluation.id, account=ANY_ACCOUNT, expected="running", progress=0.5)
    assert out.progress == 0.5 and out.status == "running"
    store.transition(Evaluation, evaluation.id, account=ANY_ACCOUNT, expected="running", to="cancelled")
    with pytest.raises(TransitionConflict):
        store.update(Evaluation, evaluation.id, account=ANY_ACCOUNT, expected="running", progress=0.6)


def test_paging_through_250_entities_with_filters_returns_each_exactly_once(store: Store):
    wanted = set()
    for i in range(250):
        m = make_model(
            account="acc_a",
            status=ArtifactStatus.ready if i % 2 else ArtifactStatus.failed,
            labels={"team": "vision" if i % 5 else "nlp"},
        )
        store.put(m)
        if i % 2 and i % 5:
            wanted.add(m.id)
    store.put(make_model(account="acc_b", status=ArtifactStatus.ready, labels={"team": "vision"}))

    seen: list[str] = []
    token = None
    pages = 0
    while True:
        page = store.list(
            Model, account="acc_a", filters={"status": "ready"}, labels={"team": "vision"}, limit=17, page_token=token
        )
        seen += [m.id for m in page.items]
        pages += 1
        token = page.next_page_token
        if token is None:
            break
    assert len(seen) == len(set(seen)) == len(wanted)
    assert set(seen) == wanted
    assert pages >= len(wanted) // 17
    # newest first
    created = [store.get(Model, i, account="acc_a").created_at for i in seen]
    assert created == sorted(created, reverse=True)
    assert {m.id for m in store.iterate(Model, account="acc_a", filters={"status": "ready"}, labels={"team": "vision"})} == wanted


def test_one_account_never_reads_lists_or_changes_another_accounts_entities(store: Store):
    theirs = make_model(account="acc_b", status=ArtifactStatus.uploaded)
    store.put(theirs)
    with pytest.raises(NotFound):
        store.get(Model, theirs.id, account="acc_a")
    assert store.find(Model, theirs.id, account="acc_a") is None
    assert store.list(Model, account="acc_a").items == []
    with pytest.raises(TransitionConflict):
        store.transition(Model, theirs.id, account="acc_a", expected="uploaded", to="verifying")
    with pytest.raises(TransitionConflict):
        store.update(Model, theirs.id, account="acc_a", name="stolen")
    store.delete(Model, theirs.id, account="acc_a")
    mine = store.get(Model, theirs.id, account="acc_b")
    assert mine.status == "uploaded" and mine.name == "m"


def test_a_forged_page_token_is_a_clear_invalid_request(store: Store):
    with pytest.raises(InvalidRequest):
        store.list(Model, account="acc_a", page_token="!!not-a-cursor!!")


def test_a_query_no_index_serves_is_refused_like_production(store: Store):
    with pytest.raises(MissingIndex):
        store.list(Model, account="acc_a", order="-updated_at")


def test_encoding_round_trips_nested_fields(store: Store):
    evaluation = make_evaluation(
        config=InferenceConfig(top_k=3, label_mapping={"cat": "feline"}),
        summary={"accuracy": 0.5, "per_class": [{"label": "a", "f1": 1.0}]},
        timings={"inference_s": 1.5},
    )
    store.put(evaluation)
    back = store.get(Evaluation, evaluation.id, account="acc_a")
    assert back == evaluation
