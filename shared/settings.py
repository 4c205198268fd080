"""The one settings object of a process, built once in ``main()`` and passed down.

Every field can be set from the environment as ``ASSAY_<FIELD>`` (e.g. ``ASSAY_BUCKET``).
The Google client emulator variables (``DATASTORE_EMULATOR_HOST``, ``PUBSUB_EMULATOR_HOST``,
``STORAGE_EMULATOR_HOST``) are read here too, so nothing below an entry point touches
``os.environ``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """What every server-side process (functions, daemon, workers) needs to reach Google Cloud."""

    model_config = SettingsConfigDict(env_prefix="ASSAY_", extra="ignore", frozen=True)

    project: str = "assay-local"
    bucket: str = "assay-local"
    # Datastore namespace: lets several deployments (or test runs) share one project.
    namespace: str | None = None
    hint_topic: str = "assay-hints"
    hint_subscription: str = "assay-daemon-hints"
    # Where object-finalize notifications go; the storage_events function consumes them.
    storage_topic: str = "assay-storage-events"

    datastore_emulator_host: str | None = Field(
        default=None, validation_alias=AliasChoices("ASSAY_DATASTORE_EMULATOR_HOST", "DATASTORE_EMULATOR_HOST")
    )
    pubsub_emulator_host: str | None = Field(
        default=None, validation_alias=AliasChoices("ASSAY_PUBSUB_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST")
    )
    storage_emulator_host: str | None = Field(
        default=None, validation_alias=AliasChoices("ASSAY_STORAGE_EMULATOR_HOST", "STORAGE_EMULATOR_HOST")
    )
    # Signed URLs: on Google Cloud the runtime service account signs through IAM signBlob;
    # against the emulators a throwaway key is generated (no emulator checks signatures).
    signing_service_account: str | None = None
    upload_url_expiry_s: int = Field(default=900, ge=60, le=7 * 24 * 3600)
    download_url_expiry_s: int = Field(default=900, ge=60, le=7 * 24 * 3600)

    max_model_bytes: int = Field(default=2 * 1024**3, gt=0)
    max_dataset_bytes: int = Field(default=20 * 1024**3, gt=0)

    # Transactions: the client does not retry Aborted; this bounds our own loop.
    transaction_attempts: int = Field(default=8, ge=1)

    # A claimed task's lease; workers renew it by heartbeat well before it expires.
    lease_seconds: float = Field(default=120.0, gt=0)
    heartbeat_seconds: float = Field(default=15.0, gt=0)
    # Local cache for inputs fetched from Cloud Storage (keyed by digest) and result sets.
    cache_dir: str = ".cache/assay"
    # Bound on the API's local cache of result sets (Cloud Functions' disk counts against
    # the instance's memory, so keep it well under the memory setting there).
    results_cache_bytes: int = Field(default=2 * 1024**3, gt=0)

    # The HTTP API (functions/): request body cap; each request's budget for Datastore (all
    # its calls together: past it the request answers 503 with Retry-After) and, within it,
    # how long calls go on retrying once the connection is refused; how long a hint publish
    # may take, and how often an instance publishes hints: a hint goes at once when none
    # went within the interval, otherwise with the others that arrive before the interval
    # ends (a hint only wakes the daemon, so one publish wakes it for all of them).
    api_max_body_bytes: int = Field(default=64 * 1024, gt=0)
    api_datastore_deadline_s: float = Field(default=5.0, gt=0)
    api_datastore_refused_s: float = Field(default=0.5, ge=0)
    api_hint_timeout_s: float = Field(default=2.0, gt=0)
    api_hint_interval_s: float = Field(default=0.05, ge=0)
    # An instance trusts a verified key this long before reading it again (0: always
    # read). A revocation through this instance applies at once; elsewhere within this.
    api_auth_cache_s: float = Field(default=10.0, ge=0)
    # The API's and the storage event handler's log level (JSON lines on stderr).
    api_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Webhooks: the key each webhook's signing secret is derived from (keep it in Secret
    # Manager; changing it changes every secret), and whether plain http to a loopback
    # host is accepted (a local stack only).
    webhook_signing_key: SecretStr | None = None
    webhook_allow_http_loopback: bool = False

    def webhook_key(self) -> bytes:
        """The webhook signing key; against the emulators a fixed local one when unset."""
        if self.webhook_signing_key is not None:
            return self.webhook_signing_key.get_secret_value().encode()
        if self.emulated:
            return b"assay-local-webhook-signing-key"
        raise RuntimeError("ASSAY_WEBHOOK_SIGNING_KEY is not set")

    # The web console (functions/console/): the key that signs its session cookies, CSRF
    # tokens and image URLs. Set it on every instance of a deployment (a secret from Secret
    # Manager); unset, each process draws its own, so sessions last as long as the process.
    console_secret: SecretStr | None = None
    console_session_s: int = Field(default=8 * 3600, ge=60, le=7 * 24 * 3600)
    console_image_url_s: int = Field(default=300, ge=10, le=3600)

    @property
    def emulated(self) -> bool:
        return self.datastore_emulator_host is not None
