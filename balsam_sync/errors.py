"""Every exception balsam_sync raises, in one tree.

    BalsamSyncError
    ├── ConfigError                 settings missing or unreadable (no api_root, bad client.yml)
    ├── UsageError (ValueError)     bad input caught before anything is written or sent
    │   ├── UsageTypeError (TypeError)       wrong type (e.g. bulk_create given a generator)
    │   ├── FieldNotWritable (AttributeError) read-only field, or not updatable after creation
    │   ├── ObjectStateError (AttributeError)  refresh/delete of an unsaved or deleted object
    │   ├── SlicedQueryError (AttributeError, TypeError)  filter/order/delete after a slice
    │   └── NotOffered (NotImplementedError)  an operation upstream's API has not for this model
    ├── ObjectDoesNotExist          Model.DoesNotExist is a per-model subclass
    ├── MultipleObjectsReturned     Model.MultipleObjectsReturned is a per-model subclass
    ├── MirrorError                 the local mirror file is foreign or unusable (names the file)
    │   ├── MirrorDamaged           its content is damaged: `balsam-sync salvage`
    │   ├── MirrorFull              its disk is full: nothing was written
    │   ├── MirrorBusy              another process kept it locked past the busy timeout
    │   └── UnsafeFile              a link, or another user's file or folder, where ours belongs
    ├── OfflineError                the answer needs the server, but the client is offline
    │   └── NoEvidence              ...and the mirror cannot tell either (never pulled or asked)
    └── TransportError              the server could not be asked or answered badly
        ├── ProtocolError           a reply that breaks the API's protocol: a row off the
        │                           schema, a page that repeats, a redirect, HTML, too big
        ├── ServerUnreachable       no answer after the bounded retries
        │   ├── ConnectFailed       the request never left (safe to resend)
        │   ├── ReplyLost           sent, but no reply: it may have been applied
        │   │   ├── SilentLink      no reply, and no answer to a probe either
        │   │   └── Interrupted     abandoned because a stop was requested (daemon shutdown)
        │   └── Unavailable         429/502/503/504 (also an HTTPStatusError): "not now"
        └── HTTPStatusError         the server answered with a status >= 400
            ├── NotAuthenticated    401: no token, or it expired ("log in again")
            ├── NotFound            404
            ├── Rejected            400 / 405 / 409: a business rule or missing route
            ├── ValidationFailed    422 with the server's per-field messages
            └── ServerError         5xx (502/503/504 are also Unavailable)

What each failure means for a change that was being sent is decided in one place:
``balsam_sync/outcomes.py``.

Input errors also subclass the builtin a Python user expects (ValueError, TypeError,
AttributeError), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

from typing import Any


class BalsamSyncError(Exception):
    """Root of every error raised by balsam_sync."""


class ConfigError(BalsamSyncError):
    """Settings are missing or unreadable."""


class UsageError(BalsamSyncError, ValueError):
    """Bad input, detected before anything was written or sent."""


class UsageTypeError(UsageError, TypeError):
    """An argument of the wrong type, detected before any I/O."""


class FieldNotWritable(UsageError, AttributeError):
    """A field that cannot be assigned in the object's current state."""


class ObjectStateError(UsageError, AttributeError):
    """An operation that needs a saved object was called on an unsaved or deleted one."""


class SlicedQueryError(UsageError, AttributeError, TypeError):
    """Filtering, re-ordering or bulk-changing a query that was already sliced."""


class NotOffered(UsageError, NotImplementedError):
    """An operation on many objects that upstream's API does not offer for this resource."""


class ObjectDoesNotExist(BalsamSyncError):
    """``get()`` matched nothing, or the object is gone from the server."""


class MultipleObjectsReturned(BalsamSyncError):
    """``get()`` matched more than one object."""


class MirrorError(BalsamSyncError):
    """The local mirror cannot be used (corrupt, foreign, or on an unsafe file system)."""


class MirrorDamaged(MirrorError):
    """The mirror file is damaged; ``balsam-sync salvage`` recovers its queued changes."""


class MirrorFull(MirrorError):
    """The disk holding the mirror is full; the write was rolled back whole."""


class MirrorBusy(MirrorError):
    """Another process kept the mirror locked for longer than the busy timeout."""


class UnsafeFile(MirrorError):
    """A link, or a file or folder of another user, where balsam_sync keeps its own (the
    message names the path): it is never followed or used."""


class OfflineError(BalsamSyncError):
    """The request needs the server but the client is in offline mode."""


class NoEvidence(OfflineError):
    """The server cannot be asked, and the mirror holds no evidence for this query.

    The mirror answers only what it knows: a query it never saw answered (no pull of the
    resource, no earlier server answer to the same filters) would otherwise read as "nothing
    matches". Pull while online (``client.pull()``), or ask the server (``.online()``).
    """


class TransportError(BalsamSyncError):
    """The server could not be reached or answered with an error.

    Attributes:
        method: HTTP method of the failed request.
        url: URL of the failed request (never carries the token).
    """

    def __init__(self, message: str, *, method: str = "", url: str = "") -> None:
        super().__init__(message)
        self.method = method
        self.url = url


class ProtocolError(TransportError):
    """The reply broke the API's protocol, so nothing from it was used or written.

    A row that does not match the server's schema, pages that contradict each other (a page
    repeated, an empty page before ``count`` is reached, more pages than the count allows), a
    redirect or a non-JSON answer (a proxy or a login page in between), a reply over the size
    limit. For a write it means "outcome unknown": it is settled like a lost reply.

    Attributes:
        resource: the resource asked for ("Job"), or "" when the request is not about one.
        field: where in the reply the fault is (``results[3].last_update``), or "".
        status: the reply's HTTP status (0 when unknown).
    """

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        url: str = "",
        resource: str = "",
        field: str = "",
        status: int = 0,
    ) -> None:
        super().__init__(message, method=method, url=url)
        self.resource = resource
        self.field = field
        self.status = status


class ServerUnreachable(TransportError):
    """No usable reply after the bounded retries."""


class ConnectFailed(ServerUnreachable):
    """The connection was never established: the request did not reach the server."""


class ReplyLost(ServerUnreachable):
    """The request was sent but no reply arrived: the server may have applied it."""


class SilentLink(ReplyLost):
    """Sent, and neither the request nor a probe of the server was answered."""


class Interrupted(ReplyLost):
    """A request was abandoned because a stop was requested: it may have been applied."""


class HTTPStatusError(TransportError):
    """The server answered with an error status.

    Attributes:
        status: the HTTP status code.
        body: the decoded JSON body, or the raw text when it was not JSON.
    """

    def __init__(self, message: str, *, method: str, url: str, status: int, body: Any) -> None:
        super().__init__(message, method=method, url=url)
        self.status = status
        self.body = body

    @property
    def detail(self) -> str:
        """The server's reason in one line, whatever shape its body had."""
        return describe_body(self.body)


class NotAuthenticated(HTTPStatusError):
    """401: the token is missing, invalid or expired. Log in again."""


class NotFound(HTTPStatusError):
    """404: no such object (or it belongs to another user)."""


class Rejected(HTTPStatusError):
    """400/405/409: the server refused the request under one of its rules."""


class ValidationFailed(HTTPStatusError):
    """422: the server's schema validation failed; ``errors`` lists each field's message."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        detail = self.body.get("detail") if isinstance(self.body, dict) else None
        return [e for e in detail if isinstance(e, dict)] if isinstance(detail, list) else []


class ServerError(HTTPStatusError):
    """5xx: the server failed while handling the request."""


class Unavailable(ServerError, ServerUnreachable):
    """429/502/503/504: the server, or a gateway in front of it, cannot serve now.

    It is also a ``ServerUnreachable``: reads answer from the mirror, as for a refused
    connection. (A 429 is not a 5xx, but it means the same "not now".)
    """


UNAVAILABLE_STATUSES = frozenset({429, 502, 503, 504})


def describe_body(body: Any) -> str:
    """Turn any of the server's error body shapes into one readable line."""
    if isinstance(body, dict):
        detail = body.get("detail", body.get("error", body))
        if isinstance(detail, list):
            parts = []
            for item in detail:
                if isinstance(item, dict):
                    loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                    parts.append(f"{loc}: {item.get('msg', item)}" if loc else str(item.get("msg")))
                else:
                    parts.append(str(item))
            return "; ".join(parts)
        return str(detail)
    return "" if body is None else str(body)[:500]


def status_error_class(status: int) -> type[HTTPStatusError]:
    """Pick the exception class for an HTTP error status."""
    if status == 401:
        return NotAuthenticated
    if status == 404:
        return NotFound
    if status == 422:
        return ValidationFailed
    if status in UNAVAILABLE_STATUSES:
        return Unavailable
    if status >= 500:
        return ServerError
    return Rejected
