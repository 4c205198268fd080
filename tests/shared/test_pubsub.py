"""Wake-up hints over the real Pub/Sub emulator."""

from __future__ import annotations

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


def test_publishing_to_an_unreachable_pubsub_returns_false_instead_of_raising(settings: Settings):
    broken = settings.model_copy(update={"pubsub_emulator_host": "127.0.0.1:9", "hint_topic": "nowhere"})
    assert Hints(broken).publish([Hint(kind="Evaluation", id="evl_x", account="acc_a")], timeout_s=1) is False
