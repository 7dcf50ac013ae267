"""The gRPC door's one mapping of error kinds to statuses; bugs answered with their type only."""

from __future__ import annotations

import grpc
from imgcls.server.domain.errors import ErrorKind, InvalidInputError, RequestError
from imgcls.server.grpc.status import STATUS_OF_KIND, status_of


def test_every_error_kind_has_one_grpc_status_and_bugs_send_their_type_only() -> None:
    assert set(STATUS_OF_KIND) == set(ErrorKind)
    assert status_of(InvalidInputError("inputs[0]: no")) == (grpc.StatusCode.INVALID_ARGUMENT, "inputs[0]: no")
    assert status_of(RequestError("x" * 5000))[1] == "x" * 1000  # capped: never echoes a big input
    assert status_of(KeyError("secret detail")) == (grpc.StatusCode.INTERNAL, "internal error: KeyError")
