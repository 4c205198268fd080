"""The entities of Assay: one pydantic definition each, with status lifecycles as data.

Every entity carries ``id, account, name, labels, created_at, updated_at, status, reason,
message, status_changed_at``. Each kind declares its statuses, the terminal ones, the
allowed transitions (``TRANSITIONS[from]`` is the set of statuses it may move to) and the
properties that queries filter or order on (the only ones Datastore indexes).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from shared.ids import new_id
from shared.modeltasks import DEFAULT_TASK, SPECS, ModelTask, TaskConfig, spec_of
from shared.modeltasks.base import SPLIT_PATTERN
from shared.modeltasks.image_classification import ImageClassificationConfig

# --- names and labels, Kubernetes style --------------------------------------------------
#
# The one definition of every name rule. The patterns are JSON Schema-ready strings (the
# OpenAPI document carries them, via shared.api) and the checks below compile the same
# strings, so what the schema tells a client and what the server and the workers accept
# cannot drift apart.

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$"
_LABEL_NAME_PATTERN = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_PREFIX_PATTERN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
# The lookahead bounds the prefix (a DNS subdomain) to 253 characters, as the validator does.
LABEL_KEY_PATTERN = rf"^((?=[-a-z0-9.]{{1,253}}/){_LABEL_PREFIX_PATTERN}/)?{_LABEL_NAME_PATTERN}$"
LABEL_VALUE_PATTERN = rf"^({_LABEL_NAME_PATTERN})?$"
# SPLIT_PATTERN (shared.modeltasks.base, where task configs naming a split read it too): a
# split name becomes a directory of the worker and part of object names.
MAX_SPLITS = 32
# Class names (label names of a model or a dataset) are data, never paths: any printable
# text, bounded in length and in number, since an entity keeps the list.
MAX_CLASS_NAME_CHARS = 256
MAX_CLASSES = 10_000
MAX_CLASS_NAMES_TOTAL_CHARS = 256 * 1024  # all of them: an entity must stay far below 1 MiB

_NAME = re.compile(NAME_PATTERN)
_LABEL_NAME = re.compile(rf"^{_LABEL_NAME_PATTERN}$")
_LABEL_PREFIX = re.compile(rf"^{_LABEL_PREFIX_PATTERN}$")
_SPLIT = re.compile(SPLIT_PATTERN)
MAX_LABELS = 64


def check_split_name(value: str) -> str:
    """Raises ValueError unless ``value`` is a valid split name (``SPLIT_PATTERN``)."""
    if not isinstance(value, str) or not _SPLIT.fullmatch(value):
        shown = value if not isinstance(value, str) or len(value) <= 80 else value[:80] + "…"
        raise ValueError(
            f"split name {shown!r}: must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        )
    return value


def check_class_name(value: str) -> str:
    """Raises ValueError unless ``value`` is a usable class name: 1-256 characters of
    printable text, not blank (a label name of a model or a dataset)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"class name {value!r}: must be non-blank text")
    if len(value) > MAX_CLASS_NAME_CHARS:
        raise ValueError(f"class name {value[:40]!r}…: longer than {MAX_CLASS_NAME_CHARS} characters")
    if not value.isprintable():
        raise ValueError(f"class name {value!r}: control characters are not allowed")
    return value


def check_class_names(names: list[str]) -> list[str]:
    """Raises ValueError unless ``names`` is a usable label set: each a class name, no
    duplicates, at most ``MAX_CLASSES`` of them and ``MAX_CLASS_NAMES_TOTAL_CHARS`` in all."""
    if len(names) > MAX_CLASSES:
        raise ValueError(f"{len(names)} classes, more than the limit of {MAX_CLASSES}")
    total = 0
    for name in names:
        total += len(check_class_name(name))
    if total > MAX_CLASS_NAMES_TOTAL_CHARS:
        raise ValueError(f"class names total {total} characters, more than the limit of {MAX_CLASS_NAMES_TOTAL_CHARS}")
    if len(set(names)) != len(names):
        raise ValueError("a class name appears twice")
    return names


def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(
            "must be 1-63 characters of lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
        )
    return value


def check_label_key(key: str) -> str:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _LABEL_PREFIX.fullmatch(prefix)):
        raise ValueError(f"label key {key!r}: prefix must be a DNS subdomain")
    if not _LABEL_NAME.fullmatch(name):
        raise ValueError(f"label key {key!r}: name must be 1-63 alphanumerics, '-', '_' or '.'")
    return key


def check_label_value(value: str) -> str:
    if value and not _LABEL_NAME.fullmatch(value):
        raise ValueError(f"label value {value!r}: must be empty or 1-63 alphanumerics, '-', '_' or '.'")
    return value


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels")
    for key, value in labels.items():
        check_label_key(key)
        check_label_value(value)
    return labels


Name = Annotated[str, AfterValidator(_check_name)]
Labels = Annotated[dict[str, str], AfterValidator(_check_labels)]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- statuses -----------------------------------------------------------------------------


class AccountStatus(StrEnum):
    active = "active"
    disabled = "disabled"


class ApiKeyStatus(StrEnum):
    active = "active"
    revoked = "revoked"


class ArtifactStatus(StrEnum):
    """Lifecycle of an uploaded thing (a model or a dataset)."""

    awaiting_upload = "awaiting_upload"
    uploaded = "uploaded"
    verifying = "verifying"
    ready = "ready"
    failed = "failed"
    deleting = "deleting"
    gone = "gone"


class EvaluationStatus(StrEnum):
    waiting = "waiting"  # an input is not ready yet
    pending = "pending"  # queued for the daemon
    admitted = "admitted"  # claimed and submitted; the job has not reported yet
    running = "running"
    complete = "complete"
    failed = "failed"
    cancelled = "cancelled"
    deleting = "deleting"
    gone = "gone"


S = ArtifactStatus
ARTIFACT_TRANSITIONS: dict[ArtifactStatus, frozenset[ArtifactStatus]] = {
    S.awaiting_upload: frozenset({S.uploaded, S.failed, S.deleting}),
    S.uploaded: frozenset({S.verifying, S.failed, S.deleting}),
    # verifying -> uploaded: the daemon requeues a task whose job died or whose lease expired.
    S.verifying: frozenset({S.ready, S.failed, S.uploaded, S.deleting}),
    S.ready: frozenset({S.deleting}),
    S.failed: frozenset({S.deleting}),
    S.deleting: frozenset({S.gone}),
    S.gone: frozenset(),
}
ARTIFACT_TERMINAL = frozenset({S.ready, S.failed, S.gone})

E = EvaluationStatus
EVALUATION_TRANSITIONS: dict[EvaluationStatus, frozenset[EvaluationStatus]] = {
    E.waiting: frozenset({E.pending, E.failed, E.cancelled, E.deleting}),
    E.pending: frozenset({E.admitted, E.failed, E.cancelled, E.deleting}),
    # admitted/running -> pending: a retry after a dead job or an expired lease.
    E.admitted: frozenset({E.running, E.complete, E.pending, E.failed, E.cancelled, E.deleting}),
    E.running: frozenset({E.complete, E.pending, E.failed, E.cancelled, E.deleting}),
    E.complete: frozenset({E.deleting}),
    # A failed or cancelled evaluation asked for again is restarted.
    E.failed: frozenset({E.waiting, E.pending, E.deleting}),
    E.cancelled: frozenset({E.waiting, E.pending, E.deleting}),
    E.deleting: frozenset({E.gone}),
    E.gone: frozenset(),
}
EVALUATION_TERMINAL = frozenset({E.complete, E.failed, E.cancelled, E.gone})
del S, E

ACCOUNT_TRANSITIONS = {
    AccountStatus.active: frozenset({AccountStatus.disabled}),
    AccountStatus.disabled: frozenset({AccountStatus.active}),
}
API_KEY_TRANSITIONS = {ApiKeyStatus.active: frozenset({ApiKeyStatus.revoked}), ApiKeyStatus.revoked: frozenset()}


# --- the base entity ----------------------------------------------------------------------


class Entity(BaseModel):
    """Fields and class-level facts every kind shares."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    kind: ClassVar[str]
    id_prefix: ClassVar[str]
    status_enum: ClassVar[type[StrEnum]]
    transitions: ClassVar[dict[Any, frozenset[Any]]]
    terminal: ClassVar[frozenset[Any]]
    # Properties that queries filter or order on. Everything else is left out of indexes.
    indexed: ClassVar[frozenset[str]] = frozenset({"account", "name", "status", "created_at", "label_pairs"})
    # Whether each status change is kept as an Event (shared/events.py); records that are
    # themselves bookkeeping (events, deliveries, leases) say False.
    history: ClassVar[bool] = True

    id: str
    account: str
    name: Name
    labels: Labels = Field(default_factory=dict)
    created_at: dt.datetime = Field(default_factory=utcnow)
    updated_at: dt.datetime = Field(default_factory=utcnow)
    status: str
    reason: str | None = None
    message: str | None = None
    status_changed_at: dt.datetime = Field(default_factory=utcnow)

    @classmethod
    def new_id(cls) -> str:
        return new_id(cls.id_prefix)

    @classmethod
    def can_transition(cls, source: str, target: str) -> bool:
        return cls.status_enum(target) in cls.transitions.get(cls.status_enum(source), frozenset())


class TaskState(BaseModel):
    """What the daemon and the workers keep on an entity they run a job for."""

    # Attempts only ever grow (job names carry the attempt, so a restarted task never
    # meets a Job of its past); the retry budget counts from ``retry_base``, which a
    # restart on request moves up to the attempts made so far.
    attempts: int = 0
    retry_base: int = 0
    lease_owner: str | None = None
    lease_expires_at: dt.datetime | None = None
    heartbeat_at: dt.datetime | None = None
    job_name: str | None = None
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    progress_message: str | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None


class Account(Entity):
    kind: ClassVar[str] = "Account"
    id_prefix: ClassVar[str] = "acc"
    status_enum: ClassVar[type[StrEnum]] = AccountStatus
    transitions: ClassVar[dict] = ACCOUNT_TRANSITIONS
    terminal: ClassVar[frozenset] = frozenset()

    status: AccountStatus = AccountStatus.active


class Scope(StrEnum):
    read = "read"
    write = "write"
    admin = "admin"


SCOPE_IMPLIES: dict[Scope, frozenset[Scope]] = {
    Scope.read: frozenset({Scope.read}),
    Scope.write: frozenset({Scope.read, Scope.write}),
    Scope.admin: frozenset({Scope.read, Scope.write, Scope.admin}),
}


class ApiKey(Entity):
    """An API key; its id is the ``<key id>`` in ``assay_<key id>_<secret>``."""

    kind: ClassVar[str] = "ApiKey"
    id_prefix: ClassVar[str] = "key"
    status_enum: ClassVar[type[StrEnum]] = ApiKeyStatus
    transitions: ClassVar[dict] = API_KEY_TRANSITIONS
    terminal: ClassVar[frozenset] = frozenset({ApiKeyStatus.revoked})

    status: ApiKeyStatus = ApiKeyStatus.active
    secret_hash: str = Field(repr=False)
    scopes: list[Scope] = Field(default_factory=lambda: [Scope.read])
    expires_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None

    def granted(self) -> frozenset[Scope]:
        out: set[Scope] = set()
        for scope in self.scopes:
            out |= SCOPE_IMPLIES[scope]
        return frozenset(out)


ModelFramework = Literal["transformers"]
ArchiveFormat = Literal["zip", "tar.gz"]
DatasetFormat = Literal["imagefolder-zip", "imagefolder-tar.gz", "parquet", "jsonl", "csv"]


class Artifact(Entity, TaskState):
    """A model or a dataset: uploaded once, then verified by a worker."""

    status_enum: ClassVar[type[StrEnum]] = ArtifactStatus
    transitions: ClassVar[dict] = ARTIFACT_TRANSITIONS
    terminal: ClassVar[frozenset] = ARTIFACT_TERMINAL

    status: ArtifactStatus = ArtifactStatus.awaiting_upload
    task: ModelTask = DEFAULT_TASK
    declared_size: int = Field(gt=0)
    content_type: str
    upload_object: str
    size: int | None = None  # of the uploaded object, as Cloud Storage reports it
    digest: str | None = None  # sha256 of the uploaded object, set by the worker
    label_names: list[str] | None = None


class Model(Artifact):
    kind: ClassVar[str] = "Model"
    id_prefix: ClassVar[str] = "mdl"

    framework: ModelFramework = "transformers"
    archive_format: ArchiveFormat = "zip"
    parameter_count: int | None = None
    architecture: str | None = None


class Dataset(Artifact):
    kind: ClassVar[str] = "Dataset"
    id_prefix: ClassVar[str] = "dst"

    format: DatasetFormat = "imagefolder-zip"
    shape: str | None = None  # one of the task's dataset_shapes, for a task with several
    splits: dict[str, int] | None = None  # split name -> instance count
    invalid_instances: int | None = None


# The image task's config, under the name the first version gave it (SDK users import it).
InferenceConfig = ImageClassificationConfig


class QueueReason(StrEnum):
    queued = "queued"
    account_limit = "account_limit"
    global_limit = "global_limit"
    waiting_for_model = "waiting_for_model"
    waiting_for_dataset = "waiting_for_dataset"


class Evaluation(Entity, TaskState):
    kind: ClassVar[str] = "Evaluation"
    id_prefix: ClassVar[str] = "evl"
    status_enum: ClassVar[type[StrEnum]] = EvaluationStatus
    transitions: ClassVar[dict] = EVALUATION_TRANSITIONS
    terminal: ClassVar[frozenset] = EVALUATION_TERMINAL
    indexed: ClassVar[frozenset[str]] = Entity.indexed | {"model_id", "dataset_id", "split", "fingerprint", "stopping"}

    status: EvaluationStatus = EvaluationStatus.waiting
    model_id: str
    dataset_id: str
    split: str
    task: ModelTask = DEFAULT_TASK  # the model's, when the evaluation was ordered
    # The task's config (``shared.modeltasks``), validated and with its defaults filled in
    # when the evaluation was ordered; ``inference_config()`` gives it typed.
    config: dict[str, Any] = Field(default_factory=dict)
    fingerprint: str
    queue_position: int | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    summary: dict[str, Any] | None = None
    result_prefix: str | None = None
    # Cancelled while its job may still run: the daemon stops the job, then clears this.
    stopping: bool = False

    @model_validator(mode="before")
    @classmethod
    def _config_complete(cls, values: Any) -> Any:
        """The config as its task reads it (a task's config model or a dict), every default
        filled in; a value the task refuses is a validation error."""
        if not isinstance(values, dict):
            return values
        task, config = values.get("task", DEFAULT_TASK), values.get("config") or {}
        if isinstance(task, str) and task in SPECS:
            config = config if isinstance(config, TaskConfig) else spec_of(task).parse_config(config)
            values = {**values, "config": config.model_dump()}
        return values

    def inference_config(self) -> TaskConfig:
        """The config, typed by the evaluation's task."""
        return spec_of(self.task).parse_config(self.config)


def evaluation_fingerprint(*, model_id: str, dataset_id: str, split: str, config: TaskConfig) -> str:
    """The identity of an evaluation's result.

    A model or dataset id names immutable bytes (one upload, then verified), so the id
    stands for the digest — and it is known while the upload is still under way.
    """
    material = "\n".join([model_id, dataset_id, split, config.canonical()])
    return hashlib.sha256(material.encode()).hexdigest()


def evaluation_id(*, account: str, fingerprint: str) -> str:
    """Evaluations are keyed by account + fingerprint, so finding one is a transactional get."""
    digest = int.from_bytes(hashlib.sha256(f"{account}\n{fingerprint}".encode()).digest()[:16], "big")
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    chars = []
    for _ in range(20):
        digest, rem = divmod(digest, 36)
        chars.append(alphabet[rem])
    return "evl_" + "".join(chars)


KINDS: dict[str, type[Entity]] = {cls.kind: cls for cls in (Account, ApiKey, Model, Dataset, Evaluation)}
