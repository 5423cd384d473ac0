"""What a request gets when it is bad: an HTTP status and OpenAI's error body.

The runtime raises :class:`~edgert.runtime.errors.EdgertError` with one line naming the problem;
here that line becomes ``{"error": {"message": ..., "type": ..., "code": ...}}`` (the shape the
``openai`` client parses) with a 4xx status. The few failures only a server has (an unknown
route, a lost session, an upload too large, a missing key, a full queue) are EdgertErrors that
carry their status.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from edgert.runtime.errors import EdgertError, first_line


class ServeError(EdgertError):
    status = 400
    type = "invalid_request_error"
    code: str | None = None


class Unauthorized(ServeError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class NotFound(ServeError):
    status, code = 404, "not_found"


class SessionLost(ServeError):
    """The replica that held a stream's state is gone (it died and was restarted, or was
    removed): its state went with it, and a fresh one would give wrong predictions."""

    status, code = 410, "session_lost"


class PayloadTooLarge(ServeError):
    status, code = 413, "payload_too_large"


class UnsupportedMedia(ServeError):
    status, code = 415, "unsupported_media"


class Busy(ServeError):
    """The model's queue is full (``--max-queued``): refused at once, to be retried."""

    status, type, code = 429, "rate_limit_error", "queue_full"
    retry_after_s = 1


class Unavailable(ServeError):
    status, type, code = 503, "server_error", "replica_unavailable"


def error_body(err: BaseException) -> tuple[int, dict]:
    """(status, body) for a request that failed with ``err``: an EdgertError's line as a 4xx
    (its status where it carries one), anything else a 500 that says no more than that (the
    server's log has the traceback)."""
    err = unwrap(err)
    if isinstance(err, EdgertError):
        status = getattr(err, "status", 400)
        return status, {"error": {"message": first_line(err), "type": getattr(err, "type", "invalid_request_error"),
                                  "param": None, "code": getattr(err, "code", None)}}
    return 500, {"error": {"message": "internal server error (the server's log has the details)", "type": "server_error",
                           "param": None, "code": None}}


def unwrap(err: BaseException) -> BaseException:
    """A replica's exception as it was raised there (Ray wraps it in a RayTaskError whose text
    is the remote traceback)."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) else err


@dataclass(frozen=True)
class Failure:
    """A request's user error, returned by a replica rather than raised: a bad request is the
    client's mistake, not the server's, so it leaves no traceback in the replica's log (Ray
    Serve logs one for every exception a replica raises). The API raises it again."""

    error: EdgertError


def user_errors(method):
    """Make a replica's async method return a :class:`Failure` for an EdgertError."""
    @functools.wraps(method)
    async def wrapper(*args, **kwargs):
        try:
            return await method(*args, **kwargs)
        except EdgertError as err:
            return Failure(err)
    return wrapper
