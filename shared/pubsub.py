"""Pub/Sub wake-up hints: after a commit that creates work, tell the daemon to look now.

A hint is never the truth (Datastore is): losing one only delays work until the daemon's
next poll, so publishing failures are logged, never raised to the user.

The daemon waits on a streaming pull (one long-lived gRPC stream that the server pushes
messages down), not a loop of synchronous pulls: a synchronous pull with nothing to
deliver may return at once (the emulator's always does), so a loop of them spins; idle,
such a loop cost the daemon ~27% of a core and the Pub/Sub emulator ~25%
(bench/idle_stack.py has the figures now).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

import grpc
from google import pubsub_v1 as pubsub_gapic
from google.api_core import exceptions as gexc, retry as retries
from google.cloud import pubsub_v1  # type: ignore[attr-defined]  # google-cloud-pubsub ships no type information
from google.cloud.pubsub_v1.subscriber.futures import StreamingPullFuture
from google.cloud.pubsub_v1.subscriber.message import Message
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from shared.settings import Settings

log = logging.getLogger(__name__)


def publisher_client(settings: Settings) -> pubsub_gapic.PublisherClient:
    """The generated client: each ``publish`` is one RPC. (``pubsub_v1.PublisherClient``
    batches in threads of its own, at a CPU cost far above the RPC's.)"""
    if settings.pubsub_emulator_host:
        channel = grpc.insecure_channel(settings.pubsub_emulator_host)
        return pubsub_gapic.PublisherClient(transport=PublisherGrpcTransport(channel=channel))
    return pubsub_gapic.PublisherClient()


def subscriber_client(settings: Settings) -> pubsub_v1.SubscriberClient:
    if settings.pubsub_emulator_host:
        channel = grpc.insecure_channel(settings.pubsub_emulator_host)
        return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))
    return pubsub_v1.SubscriberClient()


def ensure_topic(publisher: pubsub_gapic.PublisherClient, project: str, topic: str) -> str:
    path = publisher.topic_path(project, topic)
    try:
        publisher.create_topic(name=path)
    except gexc.AlreadyExists:
        pass
    return path


def ensure_subscription(
    subscriber: pubsub_v1.SubscriberClient, project: str, topic: str, subscription: str, *, ack_deadline_s: int = 30
) -> str:
    path = subscriber.subscription_path(project, subscription)
    try:
        subscriber.create_subscription(name=path, topic=f"projects/{project}/topics/{topic}", ack_deadline_seconds=ack_deadline_s)
    except gexc.AlreadyExists:
        pass
    return path


@dataclass(frozen=True)
class Hint:
    kind: str
    id: str
    account: str


# After the stream fails for good (say, the subscription was deleted), how long ``wait``
# sleeps through its timeouts (the daemon polls meanwhile) before opening a new one.
REOPEN_AFTER_S = 30.0


class Hints:
    """Publish and receive wake-up hints on the hint topic."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._publisher: pubsub_gapic.PublisherClient | None = None
        self._subscriber: pubsub_v1.SubscriberClient | None = None
        # What the stream delivered and ``wait`` has not yet returned, under this condition.
        self._arrived = threading.Condition()
        self._received: list[Hint] = []
        self._stream: StreamingPullFuture | None = None
        self._reopen_at = 0.0  # monotonic

    @property
    def topic_path(self) -> str:
        return f"projects/{self.settings.project}/topics/{self.settings.hint_topic}"

    @property
    def subscription_path(self) -> str:
        return f"projects/{self.settings.project}/subscriptions/{self.settings.hint_subscription}"

    def _pub(self) -> pubsub_gapic.PublisherClient:
        if self._publisher is None:
            self._publisher = publisher_client(self.settings)
        return self._publisher

    def _sub(self) -> pubsub_v1.SubscriberClient:
        if self._subscriber is None:
            self._subscriber = subscriber_client(self.settings)
        return self._subscriber

    def ensure(self) -> None:
        """Create the topic and the daemon's subscription if missing (emulators, setup)."""
        ensure_topic(self._pub(), self.settings.project, self.settings.hint_topic)
        ensure_subscription(self._sub(), self.settings.project, self.settings.hint_topic, self.settings.hint_subscription)

    def publish(self, hints: list[Hint], *, timeout_s: float = 5.0) -> bool:
        """Publish hints as one message; returns False (and logs) on failure instead of raising.

        Callers batch for themselves (the API sends what queued up within its hint interval).
        One message, a JSON list, however many hints: the daemon only needs to wake, and
        Pub/Sub's cost (its emulator's CPU too) goes by message and request, not by hint.
        """
        if not hints:
            return True
        messages = [pubsub_gapic.PubsubMessage(data=json.dumps([h.__dict__ for h in hints]).encode())]
        # Transient failures are retried, but never past timeout_s in all.
        retry = retries.Retry(initial=0.1, maximum=1.0, predicate=retries.if_transient_error, timeout=timeout_s)
        try:
            self._pub().publish(topic=self.topic_path, messages=messages, retry=retry, timeout=timeout_s)
            return True
        except Exception:  # noqa: BLE001 — a hint is best effort by design; the daemon polls
            log.warning("could not publish wake-up hints", exc_info=True, extra={"count": len(hints)})
            return False

    def wait(self, timeout_s: float, *, max_messages: int = 100) -> list[Hint]:
        """Block until hints arrive or ``timeout_s`` passes; what it returns is acknowledged.

        The first call opens a streaming pull that stays open until ``close``; hints that
        arrive between calls are kept for the next one. Never raises: when the stream fails
        it is logged, and ``wait`` just sleeps (the caller's poll stands in) until it is
        reopened ``REOPEN_AFTER_S`` later. ``max_messages`` bounds what the stream holds
        unacknowledged (it acknowledges on arrival, so this is only flow control).
        """
        self._listen(max_messages)
        with self._arrived:
            if not self._received:
                self._arrived.wait(timeout_s)
            out, self._received = self._received, []
        return out

    def _listen(self, max_messages: int) -> None:
        """Open the stream unless it is open, or failed too recently."""
        if self._stream is not None and self._stream.done():
            try:
                self._stream.result(timeout=0)
            except Exception:  # noqa: BLE001 — the stream's end is logged, then reopened later
                log.warning("hint stream ended; polling only for now", exc_info=True, extra={"retry_in_s": REOPEN_AFTER_S})
            self._stream = None
            self._reopen_at = time.monotonic() + REOPEN_AFTER_S
        if self._stream is not None or time.monotonic() < self._reopen_at:
            return
        self._stream = self._sub().subscribe(
            self.subscription_path,
            callback=self._on_message,
            flow_control=pubsub_v1.types.FlowControl(max_messages=max_messages),
        )

    def _on_message(self, message: Message) -> None:
        """Runs on the subscriber's threads, once per message."""
        message.ack()
        try:
            data = json.loads(message.data)
            hints = [Hint(**h) for h in (data if isinstance(data, list) else [data])]  # a dict: one hint, as once sent
        except (ValueError, TypeError):
            log.warning("ignoring malformed hint", extra={"message_id": message.message_id})
            return
        with self._arrived:
            self._received += hints
            self._arrived.notify_all()

    def close(self) -> None:
        """Stop the stream (waiting for its threads) and the clients."""
        if self._stream is not None:
            self._stream.cancel()
            try:
                self._stream.result(timeout=10)
            except Exception:  # noqa: BLE001 — shutting down: how the stream ended no longer matters
                pass
            self._stream = None
        if self._subscriber is not None:
            self._subscriber.close()
