"""Registry of named operations with pydantic input models, invoked by the API, the CLI and BPMN tasks."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import to_jsonable_python

from controltower.config import Settings
from controltower.core.auth import Principal, Role

log = logging.getLogger("controltower.actions")

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")

# Who the server itself is when it calls an action (a BPMN service task, a schedule).
SYSTEM_PRINCIPAL = Principal(token_id=0, name="system", role=Role.admin, subject="system:core")

ActionHandler = Callable[[Any, Principal], Any]


class ActionError(Exception):
    """Base of every error `ActionRegistry.call` raises on purpose."""


class ActionNotFound(ActionError, LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no action named {name!r}")
        self.name = name


class ActionForbidden(ActionError):
    def __init__(self, name: str, principal: Principal, role: Role) -> None:
        super().__init__(f"role '{principal.role}' may not call action {name!r}; needs {role.value}")
        self.name = name


class ActionParamsInvalid(ActionError):
    """The params do not fit the action's input model; `errors` names each field and reason."""

    def __init__(self, name: str, errors: list[dict[str, str]]) -> None:
        summary = "; ".join(f"{e['field'] or 'params'}: {e['reason']}" for e in errors)
        super().__init__(f"invalid params for action {name!r}: {summary}")
        self.name = name
        self.errors = errors
        self.summary = summary


class ActionFailed(ActionError):
    """The action ran and could not do its job (an upstream refused, timed out, …)."""


@dataclass(frozen=True)
class ActionSpec:
    name: str
    description: str
    role: Role
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "role": self.role.value,
            "input_schema": self.input_schema,
            "output_schema": self.output_schema,
        }


@dataclass(frozen=True)
class _Action:
    spec: ActionSpec
    input_model: type[BaseModel]
    output_model: type[BaseModel] | None
    handler: ActionHandler
    is_async: bool


def validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in err["loc"]), "reason": err["msg"], "type": err["type"]}
        for err in exc.errors()
    ]


class ActionRegistry:
    """Actions by name. Register at setup time; call from anywhere on the event loop."""

    def __init__(self) -> None:
        self._actions: dict[str, _Action] = {}

    def register(
        self,
        name: str,
        input_model: type[BaseModel],
        handler: ActionHandler,
        *,
        description: str,
        role: Role = Role.operator,
        output_model: type[BaseModel] | None = None,
    ) -> ActionSpec:
        """Add an action. `handler(params, principal)` may be sync (run in a thread) or async."""
        if not NAME_RE.match(name):
            raise ValueError(f"action name {name!r} must be dotted lowercase words, e.g. 'iot.send_command'")
        if name in self._actions:
            raise ValueError(f"action {name!r} is already registered")
        if not (isinstance(input_model, type) and issubclass(input_model, BaseModel)):
            raise TypeError(f"action {name!r}: input_model must be a pydantic model class")
        spec = ActionSpec(
            name=name,
            description=description,
            role=role,
            input_schema=input_model.model_json_schema(by_alias=True),
            output_schema=output_model.model_json_schema(mode="serialization") if output_model else None,
        )
        # An async callable object is called in a thread and its awaitable awaited on the loop.
        is_async = inspect.iscoroutinefunction(handler)
        self._actions[name] = _Action(spec, input_model, output_model, handler, is_async)
        return spec

    def __contains__(self, name: object) -> bool:
        return name in self._actions

    def get(self, name: str) -> ActionSpec:
        """The spec of `name`; ActionNotFound if there is none."""
        try:
            return self._actions[name].spec
        except KeyError:
            raise ActionNotFound(name) from None

    def list(self) -> list[ActionSpec]:
        return [self._actions[n].spec for n in sorted(self._actions)]

    def validate(self, name: str, params: Any) -> BaseModel:
        """Parse `params` with the action's input model; ActionParamsInvalid names the bad fields."""
        action = self._lookup(name)
        if not isinstance(params, dict):
            raise ActionParamsInvalid(
                name, [{"field": "", "reason": "params must be a JSON object", "type": "dict_type"}]
            )
        try:
            return action.input_model.model_validate(params)
        except ValidationError as exc:
            raise ActionParamsInvalid(name, validation_errors(exc)) from None

    async def call(self, name: str, params: dict[str, Any], principal: Principal) -> Any:
        """Check the role, validate `params`, run the handler; return its result as JSON-ready data."""
        action = self._lookup(name)
        if not principal.has(action.spec.role):
            raise ActionForbidden(name, principal, action.spec.role)
        model = self.validate(name, params)
        if action.is_async:
            result = await action.handler(model, principal)
        else:
            result = await asyncio.to_thread(action.handler, model, principal)
            if inspect.isawaitable(result):
                result = await result
        if action.output_model is not None:
            result = action.output_model.model_validate(result, from_attributes=True)
        if isinstance(result, BaseModel):
            return result.model_dump(mode="json", by_alias=True)
        return to_jsonable_python(result)

    def _lookup(self, name: str) -> _Action:
        try:
            return self._actions[name]
        except KeyError:
            raise ActionNotFound(name) from None


# -- built-in actions ------------------------------------------------------------------------

MAX_RESPONSE_BYTES = 10 * 1024 * 1024
MAX_BACKOFF_S = 60.0


def _check_scheme(url: AnyHttpUrl) -> AnyHttpUrl:
    if url.scheme not in ("http", "https"):
        raise ValueError("url must be http:// or https://")
    return url


class HttpRequestParams(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] = "GET"
    url: AnyHttpUrl
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = Field(None, description="Raw request body (text)")
    json_body: Any = Field(None, alias="json", description="A JSON request body, instead of `body`")
    timeout_s: float = Field(30.0, gt=0, le=600)
    follow_redirects: bool = False

    @model_validator(mode="after")
    def _one_body(self) -> HttpRequestParams:
        if self.body is not None and self.json_body is not None:
            raise ValueError("give either 'body' or 'json', not both")
        return self


class HttpResponseResult(BaseModel):
    status: int
    headers: dict[str, str]
    text: str
    truncated: bool = Field(False, description=f"The body was cut at {MAX_RESPONSE_BYTES} bytes")


class WebhookParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: AnyHttpUrl
    payload: Any = Field(description="Any JSON value; POSTed as the request body")
    headers: dict[str, str] = Field(default_factory=dict)
    retries: int | None = Field(
        None, ge=0, le=20, description="Attempts after the first; default CT_WEBHOOK_RETRIES"
    )
    backoff_s: float = Field(
        1.0, ge=0, le=MAX_BACKOFF_S, description="First wait between attempts; doubles each time"
    )
    timeout_s: float = Field(10.0, gt=0, le=300)


class WebhookResult(BaseModel):
    delivered: bool
    attempts: int
    last_status: int | None
    error: str | None = None


def _body_kwargs(params: HttpRequestParams) -> dict[str, Any]:
    if params.json_body is not None:
        return {"json": params.json_body}
    if params.body is not None:
        return {"content": params.body.encode()}
    return {}


async def http_request(params: HttpRequestParams, _principal: Principal) -> HttpResponseResult:
    """One HTTP request; any status is a result, only a transport failure is ActionFailed."""
    url = str(_check_scheme(params.url))
    try:
        client = httpx.AsyncClient(timeout=params.timeout_s, follow_redirects=params.follow_redirects)
        async with client:
            request = client.build_request(params.method, url, headers=params.headers, **_body_kwargs(params))
            response = await client.send(request, stream=True)
            try:
                chunks: list[bytes] = []
                size = 0
                truncated = False
                async for chunk in response.aiter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > MAX_RESPONSE_BYTES:
                        truncated = True
                        break
            finally:
                await response.aclose()
    except httpx.TimeoutException as exc:
        raise ActionFailed(f"{params.method} {url} timed out after {params.timeout_s}s") from exc
    except httpx.HTTPError as exc:
        raise ActionFailed(f"{params.method} {url} failed: {exc.__class__.__name__}: {exc}") from exc
    raw = b"".join(chunks)[:MAX_RESPONSE_BYTES]
    encoding = response.charset_encoding or "utf-8"
    return HttpResponseResult(
        status=response.status_code,
        headers=dict(response.headers),
        text=raw.decode(encoding, errors="replace"),
        truncated=truncated,
    )


def _retryable(status: int) -> bool:
    return status >= 500 or status in (408, 425, 429)


def webhook_sender(default_retries: int) -> Callable[[WebhookParams, Principal], Any]:
    async def notify_webhook(params: WebhookParams, _principal: Principal) -> WebhookResult:
        """POST the payload; retry transport errors, 5xx, 408 and 429 with exponential backoff."""
        url = str(_check_scheme(params.url))
        retries = default_retries if params.retries is None else params.retries
        attempts = 0
        last_status: int | None = None
        error: str | None = None
        async with httpx.AsyncClient(timeout=params.timeout_s) as client:
            while True:
                attempts += 1
                try:
                    response = await client.post(url, json=params.payload, headers=params.headers)
                    last_status = response.status_code
                    error = None if response.is_success else f"HTTP {response.status_code}"
                    if response.is_success:
                        return WebhookResult(delivered=True, attempts=attempts, last_status=last_status)
                    if not _retryable(response.status_code):
                        break
                except httpx.HTTPError as exc:
                    last_status = None
                    error = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
                if attempts > retries:
                    break
                await asyncio.sleep(min(params.backoff_s * 2 ** (attempts - 1), MAX_BACKOFF_S))
        log.warning("webhook %s not delivered after %d attempts: %s", url, attempts, error)
        return WebhookResult(delivered=False, attempts=attempts, last_status=last_status, error=error)

    return notify_webhook


def register_builtin_actions(registry: ActionRegistry, settings: Settings) -> None:
    """The core's own actions: `http.request` and `notify.webhook`."""
    registry.register(
        "http.request",
        HttpRequestParams,
        http_request,
        description="Make one HTTP request from the server and return status, headers and text.",
        role=Role.operator,
        output_model=HttpResponseResult,
    )
    registry.register(
        "notify.webhook",
        WebhookParams,
        webhook_sender(settings.webhook_retries),
        description="POST a JSON payload to a URL, retrying with exponential backoff until delivered.",
        role=Role.operator,
        output_model=WebhookResult,
    )
