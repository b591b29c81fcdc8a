"""One error base class carrying a gRPC status code; the servicer maps it to the wire once."""

from __future__ import annotations

import grpc


class AgentError(Exception):
    """An error with the gRPC status code it maps to. The message says what failed and how to fix it."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class InvalidArgument(AgentError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(AgentError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class NotFound(AgentError):
    code = grpc.StatusCode.NOT_FOUND


class Unavailable(AgentError):
    code = grpc.StatusCode.UNAVAILABLE


class Cancelled(AgentError):
    code = grpc.StatusCode.CANCELLED


class DeadlineExceeded(AgentError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class PermissionDenied(AgentError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unimplemented(AgentError):
    code = grpc.StatusCode.UNIMPLEMENTED


class DataLoss(AgentError):
    """Stored data does not match what was written (hash mismatch, missing object)."""

    code = grpc.StatusCode.DATA_LOSS


class CorruptData(DataLoss):
    """Stored bytes are not a valid (or complete) stream of their codec."""


class ResourceExhausted(AgentError):
    """Not enough of something (disk space) for the operation."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class StorageError(AgentError):
    code = grpc.StatusCode.UNAVAILABLE


class StorageUnreachable(StorageError):
    """No answer from the storage after every attempt (network, DNS, endpoint down): may pass by itself."""


class NothingToBackup(FailedPrecondition):
    """An incremental backup found no transactions since the requested position: not a failure."""


class ConfigError(Exception):
    """Bad configuration: the daemon prints the message and exits with code 2."""
