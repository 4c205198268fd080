"""One exception hierarchy for every part of Assay.

Library errors (``google.api_core``, kubernetes ``ApiException``) are translated into these
at the boundary and chained with ``from``; the API maps each class to one HTTP status in one
place. Permanent and temporary failures are different classes: a temporary one says how long
to wait.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class AssayError(Exception):
    """Base of every error Assay raises on purpose.

    ``code`` is machine-readable and stable; ``message`` is for people; ``details`` is a
    JSON-serialisable object with whatever helps the caller fix the request.
    """

    http_status = 500
    code = "internal"

    def __init__(self, message: str, *, code: str | None = None, details: Any = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class InvalidRequest(AssayError):
    """The request cannot be understood (malformed JSON, bad cursor)."""

    http_status = 400
    code = "invalid_request"


class Unauthenticated(AssayError):
    http_status = 401
    code = "unauthenticated"


class Forbidden(AssayError):
    """The caller is known but lacks a scope on its own account."""

    http_status = 403
    code = "forbidden"


class NotFound(AssayError):
    """Missing, or another account's: the two are indistinguishable on purpose."""

    http_status = 404
    code = "not_found"


class Conflict(AssayError):
    """The entity is not in a state that allows the operation."""

    http_status = 409
    code = "conflict"


class TransitionConflict(Conflict):
    """A compare-and-set found another status than expected: a lost race or a stale view.

    ``current`` is the status actually found (``None`` when the entity is gone).
    """

    code = "status_conflict"

    def __init__(self, message: str, *, current: str | None, details: Any = None):
        super().__init__(message, details=details if details is not None else {"current": current})
        self.current = current


class InvalidSignature(AssayError):
    """A webhook delivery whose ``Assay-Signature`` does not verify (raised by the SDK's
    ``verify_signature`` in a receiver; the server never raises it)."""

    http_status = 400
    code = "invalid_signature"


class TooLarge(AssayError):
    http_status = 413
    code = "too_large"


class Invalid(AssayError):
    """Well-formed but semantically wrong input (validation errors, unsupported values)."""

    http_status = 422
    code = "invalid"


class RateLimited(AssayError):
    http_status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float = 1.0, details: Any = None):
        super().__init__(message, details=details)
        self.retry_after = retry_after


class Unavailable(AssayError):
    """A dependency is temporarily down; retrying after ``retry_after`` seconds may work."""

    http_status = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after: float = 2.0, details: Any = None):
        super().__init__(message, details=details)
        self.retry_after = retry_after


@contextlib.contextmanager
def translated_google_errors(what: str) -> Iterator[None]:
    """Turn ``google.api_core`` exceptions raised inside the block into Assay errors.

    ``Aborted`` is not translated: transaction retry loops catch it themselves.
    """
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    try:
        yield
    except gexc.Aborted:
        raise
    except gexc.NotFound as e:
        raise NotFound(f"{what}: not found") from e
    except (gexc.Conflict, gexc.PreconditionFailed) as e:  # AlreadyExists is a Conflict
        raise Conflict(f"{what}: conflict") from e
    except gexc.TooManyRequests as e:
        raise RateLimited(f"{what}: rate limited", retry_after=2.0) from e
    except gexc.BadRequest as e:
        # InvalidArgument, FailedPrecondition, OutOfRange: the backend refuses this request
        # as it is (an entity over Datastore's size limit, a bad object name), and would
        # refuse it again. Permanent, never an outage to wait out.
        raise Invalid(f"{what}: refused the request: {e.message}", code="backend_refused") from e
    except (
        gexc.ServiceUnavailable,
        gexc.DeadlineExceeded,
        gexc.InternalServerError,
        gexc.GatewayTimeout,
        gexc.RetryError,
        auth_exc.TransportError,
    ) as e:
        raise Unavailable(f"{what}: backend unavailable", retry_after=2.0) from e
    except gexc.GoogleAPICallError as e:
        raise Unavailable(f"{what}: backend error ({type(e).__name__})") from e
    except ConnectionError as e:
        raise Unavailable(f"{what}: backend unreachable") from e
