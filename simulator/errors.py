"""Errors of the simulator's HTTP API; each says which HTTP status and OpenAI type it means.

Hierarchy::

    SimulatorError            500 internal_error
    ├── BadRequest            400 invalid_request_error (malformed body, prompt too long, ...)
    ├── ModelNotFound         404 not_found_error, param "model"
    ├── EngineNotReady        503 service_unavailable_error (starting up, step loop down)
    └── InjectedFailure       500 internal_error (``--error-rate``)

The types are OpenAI's words, which aif's gateway answers too, so the same bad request reads
the same on every hop. (vLLM itself says ``BadRequestError``, ``NotFoundError`` ...; the
gateway puts an engine's 4xx error in these words as it relays it.)

They become OpenAI-shaped bodies (``{"error": {"message", "type", "param", "code"}}``) in one
place, the exception handler of :mod:`simulator.server`.
"""

from __future__ import annotations

from typing import Any


class SimulatorError(Exception):
    status_code = 500
    error_type = "internal_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.status_code, self.param)


class BadRequest(SimulatorError):
    status_code = 400
    error_type = "invalid_request_error"


class ModelNotFound(SimulatorError):
    status_code = 404
    error_type = "not_found_error"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist.", param="model")


class EngineNotReady(SimulatorError):
    status_code = 503
    error_type = "service_unavailable_error"


class InjectedFailure(SimulatorError):
    def __init__(self) -> None:
        super().__init__("Injected failure: the simulated engine failed this request.")


def error_body(
    message: str, error_type: str, code: int, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}
