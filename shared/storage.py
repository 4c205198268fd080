"""The Cloud Storage layer: object paths, signed URLs, and object I/O for one bucket.

Layout (DESIGN.md): ``uploads/{kind}/{id}/…`` what the user sent · ``models/{id}/…``
verified files + manifest · ``datasets/{id}/{split}/part-NNNNN.parquet`` + manifest ·
``evaluations/{id}/predictions/part-NNNNN.parquet`` + ``summary.json``.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import google.auth
import google.auth.transport.requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage  # type: ignore[attr-defined]  # google-cloud-storage ships no type information

from shared.errors import NotFound, translated_google_errors
from shared.settings import Settings

log = logging.getLogger(__name__)


# --- object paths -------------------------------------------------------------------------


def upload_object(kind: str, entity_id: str, filename: str) -> str:
    """Where the user's upload of a model or dataset lands (kind: ``models``/``datasets``)."""
    return f"uploads/{kind}/{entity_id}/{filename}"


def parse_upload_object(name: str) -> tuple[str, str] | None:
    """(kind, entity id) of an upload object's path, or None if it is not one."""
    parts = name.split("/")
    if len(parts) == 4 and parts[0] == "uploads" and parts[1] in ("models", "datasets") and parts[3]:
        return parts[1], parts[2]
    return None


def upload_prefix(kind: str, entity_id: str) -> str:
    return f"uploads/{kind}/{entity_id}/"


def model_prefix(model_id: str) -> str:
    return f"models/{model_id}/"


def dataset_prefix(dataset_id: str) -> str:
    return f"datasets/{dataset_id}/"


def dataset_shard(dataset_id: str, split: str, index: int) -> str:
    return f"datasets/{dataset_id}/{split}/part-{index:05d}.parquet"


def dataset_manifest(dataset_id: str) -> str:
    return f"datasets/{dataset_id}/manifest.json"


def evaluation_prefix(evaluation_id: str) -> str:
    return f"evaluations/{evaluation_id}/"


def prediction_shard(evaluation_id: str, index: int) -> str:
    return f"evaluations/{evaluation_id}/predictions/part-{index:05d}.parquet"


def evaluation_summary(evaluation_id: str) -> str:
    return f"evaluations/{evaluation_id}/summary.json"


def prefixes_of(kind: str, entity_id: str) -> list[str]:
    """Every prefix holding objects of one entity (what deletion removes)."""
    if kind == "Model":
        return [upload_prefix("models", entity_id), model_prefix(entity_id)]
    if kind == "Dataset":
        return [upload_prefix("datasets", entity_id), dataset_prefix(entity_id)]
    if kind == "Evaluation":
        return [evaluation_prefix(entity_id)]
    return []


# --- signed URLs --------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedUrl:
    url: str
    method: str
    headers: dict[str, str]
    expires_at: dt.datetime


@functools.cache
def _emulator_signing_credentials():
    """A throwaway service-account key: emulators don't check signatures, but the URL
    must still be a real V4 signature so our code path is the production one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from google.oauth2 import service_account

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    info = {
        "type": "service_account",
        "client_email": "assay-local@assay-local.iam.gserviceaccount.com",
        "private_key": pem,
        "private_key_id": "local",
        "token_uri": "https://oauth2.googleapis.com/token",
        "project_id": "assay-local",
    }
    return service_account.Credentials.from_service_account_info(info)


# --- the storage client -------------------------------------------------------------------


class Storage:
    def __init__(self, client: storage.Client, bucket: str, *, settings: Settings, endpoint: str | None = None):
        self.client = client
        self.bucket = client.bucket(bucket)
        self.settings = settings
        # Signed URLs point here (fake-gcs-server locally; storage.googleapis.com in production).
        self.endpoint = endpoint or "https://storage.googleapis.com"

    @classmethod
    def from_settings(cls, settings: Settings) -> Storage:
        if settings.storage_emulator_host:
            endpoint = settings.storage_emulator_host
            if not endpoint.startswith("http"):
                endpoint = "http://" + endpoint
            client = storage.Client(
                project=settings.project,
                credentials=AnonymousCredentials(),
                client_options={"api_endpoint": endpoint},
            )
            return cls(client, settings.bucket, settings=settings, endpoint=endpoint)
        return cls(storage.Client(project=settings.project), settings.bucket, settings=settings)

    def ensure_bucket(self) -> None:
        """Create the bucket if missing (emulators and first-time setup)."""
        with translated_google_errors("storage"):
            if not self.bucket.exists():
                self.client.create_bucket(self.bucket.name)

    def _sign(self, name: str, *, method: str, expiry_s: int, content_type: str | None, headers: dict[str, str]) -> str:
        blob = self.bucket.blob(name)
        kwargs: dict = {}
        if self.settings.storage_emulator_host:
            kwargs["credentials"] = _emulator_signing_credentials()
        else:
            # On Cloud Functions/GKE there is no private key: sign through IAM signBlob.
            credentials, _ = google.auth.default()
            credentials.refresh(google.auth.transport.requests.Request())
            kwargs["service_account_email"] = self.settings.signing_service_account or credentials.service_account_email  # type: ignore[attr-defined]  # GCE/GKE credentials carry it
            kwargs["access_token"] = credentials.token
        return blob.generate_signed_url(
            version="v4",
            expiration=dt.timedelta(seconds=expiry_s),
            method=method,
            content_type=content_type,
            headers=dict(headers) or None,  # the client adds Host to the dict it is given
            api_access_endpoint=self.endpoint,
            **kwargs,
        )

    def signed_put(self, name: str, *, content_type: str, max_bytes: int) -> SignedUrl:
        """A V4 signed PUT with the content type and a length range signed in.

        The client must send exactly the returned headers, or Cloud Storage refuses the PUT.
        """
        expiry_s = self.settings.upload_url_expiry_s
        headers = {"x-goog-content-length-range": f"0,{max_bytes}"}
        with translated_google_errors("storage"):
            url = self._sign(name, method="PUT", expiry_s=expiry_s, content_type=content_type, headers=headers)
        expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expiry_s)
        return SignedUrl(url, "PUT", {"Content-Type": content_type, **headers}, expires_at.replace(microsecond=0))

    def signed_get(self, name: str) -> SignedUrl:
        expiry_s = self.settings.download_url_expiry_s
        with translated_google_errors("storage"):
            url = self._sign(name, method="GET", expiry_s=expiry_s, content_type=None, headers={})
        expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expiry_s)
        return SignedUrl(url, "GET", {}, expires_at.replace(microsecond=0))

    # -- objects --

    def size(self, name: str) -> int | None:
        """The object's size, or None if it does not exist."""
        with translated_google_errors("storage"):
            blob = self.bucket.get_blob(name)
        return None if blob is None else blob.size

    def exists(self, name: str) -> bool:
        return self.size(name) is not None

    def write_bytes(self, name: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        with translated_google_errors("storage"):
            self.bucket.blob(name).upload_from_string(data, content_type=content_type)

    def read_bytes(self, name: str) -> bytes:
        with translated_google_errors(f"storage object {name}"):
            return self.bucket.blob(name).download_as_bytes()

    def upload_file(self, name: str, path: str | Path, *, content_type: str = "application/octet-stream") -> None:
        with translated_google_errors("storage"):
            self.bucket.blob(name).upload_from_filename(str(path), content_type=content_type)

    def download_file(self, name: str, path: str | Path) -> None:
        """Download to ``path`` atomically (a partial file never appears under that name)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        with translated_google_errors(f"storage object {name}"):
            self.bucket.blob(name).download_to_filename(str(partial))
        partial.replace(path)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(name, size) of every object under ``prefix``, in name order."""
        with translated_google_errors("storage"):
            for blob in self.client.list_blobs(self.bucket, prefix=prefix):
                yield blob.name, blob.size

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many. Idempotent."""
        if not prefix or not prefix.endswith("/"):
            raise ValueError("refusing to delete a prefix that is not a folder")
        deleted = 0
        for name, _ in list(self.list(prefix)):
            try:
                with translated_google_errors("storage"):
                    self.bucket.blob(name).delete()
                deleted += 1
            except NotFound:
                pass  # deleted concurrently: the outcome we want
        return deleted
