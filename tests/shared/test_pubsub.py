"""Wake-up hints over the real Pub/Sub emulator."""

from __future__ import annotations

import threading
import time

from shared.pubsub import Hint, Hints
from shared.settings import Settings


def test_published_hints_wake_a_waiting_subscriber(settings: Settings):
    hints = Hints(settings)
    hints.ensure()
    sent = [Hint(kind="Evaluation", id=f"evl_{i}", account="acc_a") for i in range(3)]
    assert hints.publish(sent)
    received: list[Hint] = []
    for _ in range(10):
        received += hints.wait(timeout_s=5)
        if len(received) >= 3:
            break
    assert sorted(h.id for h in received) == ["evl_0", "evl_1", "evl_2"]
    assert hints.wait(timeout_s=0.5) == []  # acknowledged: not delivered twice
    hints.close()


def test_hints_go_as_one_message_per_publish_and_older_single_hint_messages_still_read(settings: Settings):
    hints = Hints(settings.model_copy(update={"hint_topic": "one-message", "hint_subscription": "one-message-sub"}))
    hints.ensure()
    assert hints.publish([Hint(kind="Evaluation", id=f"evl_{i}", account="acc_a") for i in range(5)])
    publisher = hints._pub()
    old_style = publisher.publish(  # what a publisher before one-message-per-publish sent
        topic=hints.topic_path, messages=[{"data": b'{"kind": "Model", "id": "mdl_1", "account": "acc_a"}'}]
    )
    assert old_style.message_ids
    pulled = []
    for _ in range(10):
        pulled += (
            hints._sub().pull(request={"subscription": hints.subscription_path, "max_messages": 100}, timeout=5).received_messages
        )
        if len(pulled) >= 2:
            break
    assert len(pulled) == 2  # five hints in one message, and the old-style one
    hints._sub().modify_ack_deadline(
        request={  # hand them back, to be read through wait()
            "subscription": hints.subscription_path,
            "ack_ids": [m.ack_id for m in pulled],
            "ack_deadline_seconds": 0,
        }
    )
    received: list[Hint] = []
    for _ in range(10):
        received += hints.wait(timeout_s=5)
        if len(received) >= 6:
            break
    assert sorted(h.id for h in received) == ["evl_0", "evl_1", "evl_2", "evl_3", "evl_4", "mdl_1"]
    hints.close()


def test_publishing_to_an_unreachable_pubsub_returns_false_instead_of_raising(settings: Settings):
    broken = settings.model_copy(update={"pubsub_emulator_host": "127.0.0.1:9", "hint_topic": "nowhere"})
    assert Hints(broken).publish([Hint(kind="Evaluation", id="evl_x", account="acc_a")], timeout_s=1) is False


def test_wait_blocks_on_the_stream_until_a_hint_comes_and_then_returns_promptly(settings: Settings):
    hints = Hints(settings)
    hints.ensure()
    try:
        started = time.monotonic()
        assert hints.wait(timeout_s=1.5) == []  # nothing: it waited out its timeout, no spin
        assert time.monotonic() - started >= 1.4
        received: list[Hint] = []
        publisher = threading.Timer(0.5, hints.publish, args=([Hint(kind="Model", id="mdl_1", account="acc_a")],))
        publisher.start()
        waited_from = time.monotonic()
        received = hints.wait(timeout_s=30)
        woke_after = time.monotonic() - waited_from
        publisher.join()
        assert [h.id for h in received] == ["mdl_1"]
        assert woke_after < 15, f"a hint took {woke_after:.1f}s to wake the waiter"  # not the full 30 s timeout
        # Hints arriving between waits are kept for the next one, and malformed ones dropped.
        hints._pub().publish(topic=hints.topic_path, messages=[{"data": b"not json"}])
        assert hints.publish([Hint(kind="Dataset", id="dst_1", account="acc_a")])
        time.sleep(0.5)
        assert [h.id for h in hints.wait(timeout_s=10)] == ["dst_1"]
    finally:
        hints.close()
    assert hints._stream is None


def test_a_stream_that_fails_is_logged_and_wait_still_returns(settings: Settings, caplog):
    hints = Hints(settings.model_copy(update={"hint_subscription": "never-created"}))
    try:
        assert hints.wait(timeout_s=0.5) == []
        deadline = time.monotonic() + 20
        while hints._stream is not None and not hints._stream.done() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert hints.wait(timeout_s=0.2) == []  # the stream ended (no such subscription): logged, polling
        assert any("hint stream ended" in r.getMessage() for r in caplog.records)
    finally:
        hints.close()
