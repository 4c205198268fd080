"""The SDK's one HTTP path: every response goes through ``raise_for_status``, every retry
through ``with_retries``.

Errors are the same hierarchy the server raises (``shared.errors``), picked from the HTTP
status and the error code, keeping the server's message, details and request id.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests

from shared import errors

log = logging.getLogger("assay")
T = TypeVar("T")

_BY_STATUS: dict[int, type[errors.AssayError]] = {
    400: errors.InvalidRequest,
    401: errors.Unauthenticated,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    413: errors.TooLarge,
    422: errors.Invalid,
    429: errors.RateLimited,
    503: errors.Unavailable,
}
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class ServerError(errors.AssayError):
    """A 5xx other than 503: a bug on the server; the request id helps its operators."""


def raise_for_status(response: requests.Response) -> None:
    """Raise the Assay error a non-2xx response stands for."""
    if response.ok:
        return
    request_id = response.headers.get("X-Request-Id")
    try:
        body = response.json().get("error", {})
    except ValueError:
        body = {}
    code = body.get("code")
    message = body.get("message") or f"HTTP {response.status_code} from {response.request.method} {response.url}"
    if request_id:
        message = f"{message} (request id {request_id})"
    cls = _BY_STATUS.get(response.status_code, ServerError)
    if cls is errors.Conflict and code == errors.TransitionConflict.code:
        error: errors.AssayError = errors.Conflict(message, code=code, details=body.get("details"))
    elif cls in (errors.RateLimited, errors.Unavailable):
        error = cls(message, retry_after=retry_after_seconds(response) or 1.0, details=body.get("details"))
        if code:
            error.code = code
    else:
        error = cls(message, code=code, details=body.get("details"))
    # Set on the instance for the caller, beside the class's own fields.
    error.status_code = response.status_code  # type: ignore[attr-defined]
    error.request_id = request_id  # type: ignore[attr-defined]
    raise error


def retry_after_seconds(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def with_retries(
    call: Callable[[], requests.Response],
    *,
    max_attempts: int = 5,
    base_delay_s: float = 0.5,
    max_delay_s: float = 20.0,
    sleep: Callable[[float], None] | None = None,
) -> requests.Response:
    """Run ``call`` until it returns a response that is not worth retrying.

    Retries connection errors and 429/502/503/504 with capped exponential backoff and full
    jitter, waiting at least what ``Retry-After`` asks for. Returns the last response (or
    re-raises the last connection error) once ``max_attempts`` is spent.
    """
    sleep = sleep or time.sleep
    for attempt in range(1, max_attempts + 1):
        try:
            response = call()
        except (requests.ConnectionError, requests.Timeout) as e:
            if attempt == max_attempts:
                raise errors.Unavailable(f"cannot reach the Assay API: {e}") from e
            delay = min(max_delay_s, base_delay_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            log.warning("connection failed (%s); retry %d/%d in %.1fs", type(e).__name__, attempt, max_attempts - 1, delay)
            sleep(delay)
            continue
        if response.status_code not in RETRY_STATUSES or attempt == max_attempts:
            return response
        delay = min(max_delay_s, base_delay_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        delay = max(delay, min(max_delay_s, retry_after_seconds(response) or 0.0))
        log.warning("HTTP %d; retry %d/%d in %.1fs", response.status_code, attempt, max_attempts - 1, delay)
        sleep(delay)
    raise AssertionError("unreachable")


class Http:
    """A session bound to one API URL and key."""

    def __init__(self, url: str, api_key: str | None, *, timeout_s: float = 30.0, max_attempts: int = 5):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "assay-sdk/0.1"
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def request(self, method: str, path: str, *, json: Any = None, params: dict | None = None) -> Any:
        """The decoded JSON body of a successful response; raises an Assay error otherwise."""
        params = {k: v for k, v in (params or {}).items() if v is not None}
        response = with_retries(
            lambda: self.session.request(method, self.url + path, json=json, params=params, timeout=self.timeout_s),
            max_attempts=self.max_attempts,
        )
        raise_for_status(response)
        return response.json() if response.content else None
