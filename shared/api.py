"""Request and response bodies of the HTTP API: the one definition the server and the SDK share.

Request bodies are strict (a string where a number belongs is an error, not a coercion)
and refuse unknown fields, so a typo is a 422 naming the field rather than a silently
ignored option. Responses are *views* of the entities: the same fields minus what only
the platform needs (secret hashes, leases, storage paths), and they ignore fields they do
not know, so an older SDK keeps working when the server adds one.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Iterable
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, create_model, model_validator

from shared.entities import (
    LABEL_KEY_PATTERN,  # the name rules are defined once, in shared.entities;
    LABEL_VALUE_PATTERN,  # the OpenAPI document carries them
    MAX_SPLITS,
    NAME_PATTERN,
    SPLIT_PATTERN,
    ApiKey,
    ApiKeyStatus,
    ArchiveFormat,
    ArtifactStatus,
    Dataset,
    DatasetFormat,
    Evaluation,
    EvaluationStatus,
    Labels,
    Model,
    ModelFramework,
    Name,
    Scope,
)
from shared.events import Event
from shared.modeltasks import DEFAULT_TASK, SPECS, DatasetShape, ModelTask
from shared.summaries import EvaluationSummary
from shared.webhooks import EVENT_TYPES, Webhook, WebhookDelivery, url_pattern

ApiName = Annotated[Name, Field(json_schema_extra={"pattern": NAME_PATTERN, "maxLength": 63})]
ApiLabels = Annotated[
    Labels,
    Field(
        json_schema_extra={
            "maxProperties": 64,
            "propertyNames": {"pattern": LABEL_KEY_PATTERN},
            "additionalProperties": {"type": "string", "pattern": LABEL_VALUE_PATTERN},
        }
    ),
]
SplitName = Annotated[str, Field(pattern=SPLIT_PATTERN)]
_LABEL_KEY = re.compile(LABEL_KEY_PATTERN.removeprefix("^").removesuffix("$"))
_LABEL_VALUE = re.compile(LABEL_VALUE_PATTERN.removeprefix("^").removesuffix("$"))
_PAIR = f"{_LABEL_KEY.pattern}={_LABEL_VALUE.pattern}"
LABEL_SELECTOR_PATTERN = f"^({_PAIR}(,{_PAIR})*)?$"
# A field whose upper bound is a deployment's setting: the OpenAPI document served puts the
# setting's value in as the field's "maximum" (functions/openapi.py); the handler checks it.
SETTING_MAXIMUM = "x-maximum-from-setting"
# A string field whose pattern a deployment's setting widens: {setting name: pattern when it
# is true}; the document served carries the pattern in force (functions/openapi.py).
SETTING_PATTERN = "x-pattern-when-setting"


def id_pattern(prefix: str) -> str:
    return rf"^{prefix}_[0-9a-z]{{20}}$"


def matches_id(prefix: str, value: str) -> bool:
    """Whether ``value`` is exactly an id of the kind ``prefix`` names."""
    return re.fullmatch(id_pattern(prefix), value) is not None


def id_type(prefix: str) -> Any:
    return Annotated[str, Field(pattern=id_pattern(prefix))]


# --- page tokens --------------------------------------------------------------------------

# A page token is opaque: unpadded URL-safe base64 of what the server needs to resume. The
# schema can say its alphabet, not which tokens the server issued; anything else is a 400.
PAGE_TOKEN_PATTERN = r"^[A-Za-z0-9_-]*$"
PageToken = Annotated[
    str,
    Field(
        max_length=4096,
        description="Opaque: the next_page_token of the previous page of the same listing; empty for the first page.",
        json_schema_extra={"pattern": PAGE_TOKEN_PATTERN},
    ),
]


def encode_page_token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> bytes:
    """The bytes a token encodes; ValueError unless it is exactly what ``encode_page_token``
    makes of some non-empty bytes (``base64`` alone would skip foreign characters and accept
    non-canonical trailing bits, so a mangled token would pass for another one)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", token) or len(token) % 4 == 1:
        raise ValueError("not a page token")
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    if encode_page_token(raw) != token:
        raise ValueError("not a page token")
    return raw


# --- content types ------------------------------------------------------------------------

# Content types per archive format; the first is the default. The one chosen is signed into
# the upload URL, so the client must send exactly it. A request may name any type of its
# model's or dataset's formats: the workers read the bytes by the declared format, never by
# the content type, and "any of these" is what a JSON Schema enum can say.
CONTENT_TYPES: dict[str, tuple[str, ...]] = {
    "zip": ("application/zip", "application/x-zip-compressed"),
    "tar.gz": ("application/gzip", "application/x-gzip", "application/x-tar+gzip"),
    "parquet": ("application/vnd.apache.parquet", "application/x-parquet", "application/octet-stream"),
    "jsonl": ("application/jsonl", "application/x-ndjson", "application/json-lines", "text/plain"),
    "csv": ("text/csv", "application/csv", "text/plain"),
}
MODEL_ARCHIVE: dict[str, str] = {"zip": "zip", "tar.gz": "tar.gz"}
DATASET_ARCHIVE: dict[str, str] = {
    "imagefolder-zip": "zip",
    "imagefolder-tar.gz": "tar.gz",
    "parquet": "parquet",
    "jsonl": "jsonl",
    "csv": "csv",
}
if TYPE_CHECKING:  # a Literal built at import is beyond the type checker: to it, a string
    ModelContentType = str
    DatasetContentType = str
else:
    ModelContentType = Literal[tuple(t for a in dict.fromkeys(MODEL_ARCHIVE.values()) for t in CONTENT_TYPES[a])]
    DatasetContentType = Literal[tuple(t for a in dict.fromkeys(DATASET_ARCHIVE.values()) for t in CONTENT_TYPES[a])]


# --- requests -----------------------------------------------------------------------------


class ApiRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CreateModel(ApiRequest):
    name: ApiName
    labels: ApiLabels = Field(default_factory=dict)
    task: ModelTask = DEFAULT_TASK
    framework: ModelFramework = "transformers"
    archive_format: ArchiveFormat = "zip"
    size: int = Field(
        gt=0,
        description="Size of the archive in bytes; the upload may not exceed it.",
        json_schema_extra={SETTING_MAXIMUM: "max_model_bytes"},
    )
    content_type: ModelContentType | None = Field(default=None, description="Defaults to the archive format's usual type.")


# Any task's config: which one applies is known once the model is read (functions.evaluations).
TaskConfigBody = Annotated[
    dict[str, Any],
    Field(max_length=64),
    WithJsonSchema({"anyOf": [spec.config.model_json_schema() for spec in SPECS.values()]}),
]


def _formats_of_tasks(schema: dict[str, Any]) -> None:
    """The JSON Schema says what ``_format_of_task`` checks: each task's formats and shapes."""

    def formats(task: str) -> dict[str, Any]:
        spec = SPECS[task]
        shape = {"enum": list(spec.dataset_shapes)} if spec.dataset_shapes else {"type": "null"}
        then = {"properties": {"format": {"anyOf": [{"enum": list(spec.dataset_formats)}, {"type": "null"}]}, "shape": shape}}
        return {**then, "required": ["shape"]} if spec.dataset_shapes else then

    schema["allOf"] = [{"if": {"not": {"required": ["task"]}}, "then": formats(DEFAULT_TASK)}] + [
        {"if": {"required": ["task"], "properties": {"task": {"const": task}}}, "then": formats(task)} for task in SPECS
    ]


class CreateDataset(ApiRequest):
    model_config = ConfigDict(json_schema_extra=_formats_of_tasks)

    name: ApiName
    labels: ApiLabels = Field(default_factory=dict)
    task: ModelTask = DEFAULT_TASK
    format: DatasetFormat | None = Field(
        default=None, description="Defaults to the task's first format (GET /v1/tasks lists them)."
    )
    size: int = Field(
        gt=0,
        description="Size of the upload in bytes; the upload may not exceed it.",
        json_schema_extra={SETTING_MAXIMUM: "max_dataset_bytes"},
    )
    content_type: DatasetContentType | None = Field(default=None, description="Defaults to the format's usual type.")
    shape: DatasetShape | None = Field(
        default=None,
        description="What the dataset holds, for a task with several shapes (GET /v1/tasks: dataset.shapes): "
        "required there, refused elsewhere.",
    )

    @model_validator(mode="after")
    def _format_of_task(self) -> CreateDataset:
        """The format defaults to, and must be one of, the task's formats; the shape is one
        of the task's shapes, and given exactly when it has some."""
        spec = SPECS[self.task]
        formats = spec.dataset_formats
        if self.format is None:
            self.format = formats[0]  # type: ignore[assignment]  # a task's formats are DatasetFormat values
        elif self.format not in formats:
            raise ValueError(f"format {self.format!r} is not one of the {self.task} formats {list(formats)}")
        if spec.dataset_shapes and self.shape not in spec.dataset_shapes:
            given = "no shape" if self.shape is None else f"shape {self.shape!r}"
            raise ValueError(f"{given}: a {self.task} dataset declares its shape, one of {list(spec.dataset_shapes)}")
        if not spec.dataset_shapes and self.shape is not None:
            raise ValueError(f"a {self.task} dataset has one shape: give no shape")
        return self


class CreateEvaluations(ApiRequest):
    model_id: id_type("mdl")  # type: ignore[valid-type]  # a type built at import
    dataset_id: id_type("dst")  # type: ignore[valid-type]  # a type built at import
    splits: list[SplitName] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SPLITS,
        description="Defaults to every split of the dataset; required while the dataset is not ready yet.",
    )
    config: TaskConfigBody = Field(
        default_factory=dict,
        description="The inference config of the model's task (one of these schemas; GET /v1/tasks says which is whose).",
    )
    name: ApiName | None = None
    labels: ApiLabels = Field(default_factory=dict)


class CreateApiKey(ApiRequest):
    name: ApiName
    scopes: list[Scope] = Field(min_length=1, max_length=3)
    expires_at: dt.datetime | None = None
    labels: ApiLabels = Field(default_factory=dict)


class ListQuery(ApiRequest):
    """Query parameters of every list route."""

    model_config = ConfigDict(extra="forbid", strict=False)

    name: ApiName | None = None
    labels: str | None = Field(
        default=None,
        description="Equality selector: 'key=value,key2=value2' (all must match).",
        max_length=4096,
        json_schema_extra={"pattern": LABEL_SELECTOR_PATTERN},
    )
    limit: int = Field(default=50, ge=1, le=200)
    page_token: PageToken | None = None


class ModelListQuery(ListQuery):
    status: ArtifactStatus | None = None


class DatasetListQuery(ListQuery):
    status: ArtifactStatus | None = None


class EvaluationListQuery(ListQuery):
    status: EvaluationStatus | None = None
    model_id: id_type("mdl") | None = None  # type: ignore[valid-type]  # a type built at import
    dataset_id: id_type("dst") | None = None  # type: ignore[valid-type]  # a type built at import


class ApiKeyListQuery(ListQuery):
    status: ApiKeyStatus | None = None


class PageQuery(ApiRequest):
    """Query parameters of a list that only pages (events, webhooks, deliveries)."""

    model_config = ConfigDict(extra="forbid", strict=False)

    limit: int = Field(default=50, ge=1, le=200)
    page_token: str | None = Field(default=None, max_length=4096)


WebhookEventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]  # a type built at import


class CreateWebhook(ApiRequest):
    url: str = Field(
        max_length=2048,
        description="https only; plain http to loopback only on a local stack.",
        json_schema_extra={
            "pattern": url_pattern(allow_http_loopback=False),
            SETTING_PATTERN: {"webhook_allow_http_loopback": url_pattern(allow_http_loopback=True)},
        },
    )
    events: list[WebhookEventType] = Field(min_length=1, max_length=len(EVENT_TYPES))
    name: ApiName = "webhook"
    description: str | None = Field(default=None, max_length=500)
    labels: ApiLabels = Field(default_factory=dict)


# --- responses ----------------------------------------------------------------------------


class View(BaseModel):
    model_config = ConfigDict(extra="ignore", json_schema_serialization_defaults_required=True)


def _view_of(entity: type[BaseModel], name: str, *, public: Iterable[str], typed: dict[str, Any] | None = None) -> type[View]:
    """A response model with only the entity's ``public`` fields, in the entity's order;
    ``typed`` gives a field a stricter type on the wire than the entity stores (a summary:
    a dict in Datastore).

    An allow-list, so a field added to an entity stays out of every reply until someone
    names it here. Raises ValueError at import for a name the entity does not have.
    """
    shown = frozenset(public)
    if unknown := shown - entity.model_fields.keys():
        raise ValueError(f"{name} names fields {entity.__name__} does not have: {sorted(unknown)}")
    typed = typed or {}
    fields = {n: (typed.get(n, f.annotation), f) for n, f in entity.model_fields.items() if n in shown}
    return create_model(name, __base__=View, __doc__=entity.__doc__, **fields)  # type: ignore[call-overload]  # fields named at run time


# Left out throughout: what only the platform needs (the daemon's lease and job name,
# storage paths, secret hashes and salts).
_ENTITY = ("id", "account", "name", "labels", "created_at", "updated_at", "status", "reason", "message", "status_changed_at")
_WORK = ("attempts", "retry_base", "progress", "progress_message", "started_at", "finished_at")
_ARTIFACT = (*_ENTITY, *_WORK, "task", "declared_size", "content_type", "size", "digest", "label_names")
if TYPE_CHECKING:  # the type checker cannot follow create_model: to it, each view is a View
    ModelView = View
    DatasetView = View
    EvaluationView = View
    ApiKeyView = View
    EventView = View
    WebhookView = View
    DeliveryView = View
else:
    ModelView = _view_of(
        Model, "ModelView", public=(*_ARTIFACT, "framework", "archive_format", "parameter_count", "architecture")
    )
    DatasetView = _view_of(Dataset, "DatasetView", public=(*_ARTIFACT, "format", "shape", "splits", "invalid_instances"))
    EvaluationView = _view_of(
        Evaluation,
        "EvaluationView",
        public=(
            *_ENTITY,
            *_WORK,
            "model_id",
            "dataset_id",
            "split",
            "task",
            "config",
            "fingerprint",
            "queue_position",
            "timings",
            "summary",
            "stopping",
        ),
        typed={"summary": EvaluationSummary | None},
    )
    ApiKeyView = _view_of(ApiKey, "ApiKeyView", public=(*_ENTITY, "scopes", "expires_at", "revoked_at"))
    # An event is a record, not a thing with a lifecycle of its own: no name, labels or status.
    EventView = _view_of(
        Event,
        "EventView",
        public=(
            "id",
            "account",
            "created_at",
            "reason",
            "message",
            "entity_kind",
            "entity_id",
            "from_status",
            "to_status",
            "attempt",
            "component",
            "key_id",
        ),
    )
    WebhookView = _view_of(Webhook, "WebhookView", public=(*_ENTITY, "url", "events", "description"))
    DeliveryView = _view_of(
        WebhookDelivery,
        "DeliveryView",
        public=(
            "id",
            "account",
            "created_at",
            "updated_at",
            "status",
            "reason",
            "message",
            "status_changed_at",
            "webhook_id",
            "event_type",
            "event_id",
            "entity_kind",
            "entity_id",
            "body",
            "attempts",
            "next_attempt_at",
            "delivered_at",
            "attempt_log",
        ),
    )

VIEW_OF_KIND: dict[str, type[View]] = {"Model": ModelView, "Dataset": DatasetView, "Evaluation": EvaluationView}


class UploadTicket(View):
    """Send the bytes with ``method`` to ``url`` with exactly ``headers``, before ``expires_at``."""

    url: str
    method: Literal["PUT"] = "PUT"
    headers: dict[str, str]
    expires_at: dt.datetime


class ModelCreated(View):
    model: ModelView
    upload: UploadTicket


class DatasetCreated(View):
    dataset: DatasetView
    upload: UploadTicket


class EvaluationOutcome(StrEnum):
    created = "created"
    reused = "reused"
    restarted = "restarted"


class OrderedEvaluation(View):
    outcome: EvaluationOutcome
    evaluation: EvaluationView


class EvaluationsOrdered(View):
    evaluations: list[OrderedEvaluation]


class ApiKeyCreated(View):
    api_key: ApiKeyView
    secret: str = Field(description="The full key, 'assay_<key id>_<secret>'. Shown once; store it now.")


class WebhookCreated(View):
    webhook: WebhookView
    secret: str = Field(description="Signs every delivery (Assay-Signature). Shown once; store it now.")


class Whoami(View):
    account: str
    account_name: str
    api_key: str
    scopes: list[Scope]


class Health(View):
    status: Literal["ok"] = "ok"


class ColumnInfo(View):
    name: str
    type: str = Field(description="An Arrow type name.")
    required: bool
    description: str


class ModelRequirements(View):
    framework: str
    auto_class: str = Field(description="The transformers auto class the model loads with.")
    architectures: str = Field(description="Which architectures: a pattern of their class names.")
    files: list[str] = Field(description="The files a model directory may hold (weights as safetensors, sharded or not).")


class DatasetRequirements(View):
    formats: list[DatasetFormat]
    shapes: list[str] = Field(description="The shapes a dataset may have, one declared at upload (empty: the task has one).")
    columns: list[ColumnInfo]


class MetricInfo(View):
    name: str
    description: str
    direction: Literal["higher", "lower"] = Field(description="Which way is better.")
    per_class: bool = Field(description="Whether it has a value per class (then an 'average' parameter).")
    parameters: list[str] = Field(description="What the extra-metrics route lets a request set.")


class TaskInfo(View):
    """A model task Assay evaluates: what it accepts, how it is configured, what it measures."""

    name: ModelTask
    description: str
    model: ModelRequirements
    dataset: DatasetRequirements
    config_schema: dict[str, Any] = Field(description="JSON Schema of the evaluation config (POST /v1/evaluations 'config').")
    prediction_columns: list[ColumnInfo]
    metrics: list[MetricInfo]
    gpu: bool = Field(description="Whether its evaluations run on GPU nodes.")


class TaskList(View):
    tasks: list[TaskInfo]


T = TypeVar("T")


class Page(View, Generic[T]):
    items: list[T]
    next_page_token: str | None = None


class ModelPage(Page[ModelView]):
    pass


class DatasetPage(Page[DatasetView]):
    pass


class EvaluationPage(Page[EvaluationView]):
    pass


class ApiKeyPage(Page[ApiKeyView]):
    pass


class EventPage(Page[EventView]):
    pass


class WebhookPage(Page[WebhookView]):
    pass


class DeliveryPage(Page[DeliveryView]):
    pass


class ErrorDetail(View):
    code: str = Field(description="Stable and machine-readable, e.g. 'not_found', 'invalid'.")
    message: str
    details: Any = None


class ErrorResponse(View):
    error: ErrorDetail


def parse_labels_selector(text: str | None) -> dict[str, str]:
    """``'a=1,b=2'`` → ``{'a': '1', 'b': '2'}``: exactly ``LABEL_SELECTOR_PATTERN`` (no spaces,
    keys and values as labels have them); raises ValueError on anything else."""
    if not text:
        return {}
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
            raise ValueError(f"label selector {part!r}: expected key=value, as label keys and values are written")
        out[key] = value
    return out
