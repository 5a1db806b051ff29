"""Engine options: one pydantic model per engine, filled from a URL's query string and
the keyword arguments of ``connect``.

A model lists the options its engine takes (``extra="forbid"``: an unknown one is
refused, naming the known ones). Query parameters are strings, so booleans and numbers
are read from strings as well as taken as they are. Only the options given are passed
on: the engine's constructor keeps the defaults and checks the values (one check, at
the seam). Messages name an option and show its value, except the value of a
credential option (``token``, ``api_key``; see :func:`agrame_vdb.redact.is_secret_option`),
which is never shown.

>>> class Options(EngineOptions):
...     token_copy: Bool = None
...     retries: Int = None
>>> parse_options(Options, {"token_copy": "0"}, "demo")
{'token_copy': False}
>>> parse_options(Options, {"colour": "red"}, "demo")
Traceback (most recent call last):
...
agrame_vdb.errors.InvalidInputError: unknown options for demo: ['colour']; known: token_copy, retries
>>> parse_options(Options, {"retries": "many"}, "demo")
Traceback (most recent call last):
...
agrame_vdb.errors.InvalidInputError: option retries must be a int, got 'many'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, ValidationInfo

from ..errors import InvalidInputError
from ..redact import is_secret_option

__all__ = ["EngineOptions", "TokenCopyOptions", "parse_options", "Bool", "Int", "Float"]

M = TypeVar("M", bound="EngineOptions")

_TRUE = frozenset(("1", "true", "yes", "on"))
_FALSE = frozenset(("0", "false", "no", "off"))


def _to_bool(value: Any, info: ValidationInfo) -> bool:
    """A bool, or a URL string (1/0, true/false, yes/no, on/off; any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE:
        return True
    if isinstance(value, str) and value.lower() in _FALSE:
        return False
    raise InvalidInputError(f"option {info.field_name} must be a boolean (1/0, true/false), got {value!r}")


def _to_number(kind: type) -> Callable[[Any, ValidationInfo], Any]:
    def convert(value: Any, info: ValidationInfo) -> Any:
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise InvalidInputError(f"option {info.field_name} must be a {kind.__name__}, got {value!r}") from None

    return convert


#: option types: a value as given or as a URL string
Bool = Annotated[bool | None, BeforeValidator(_to_bool)]
Int = Annotated[int | None, BeforeValidator(_to_number(int))]
Float = Annotated[float | None, BeforeValidator(_to_number(float))]


class EngineOptions(BaseModel):
    """The options one engine takes; declare each with a default of None (not given)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenCopyOptions(EngineOptions):
    """The embedded Qdrant engines (Edge, local mode)."""

    token_copy: Bool = None


def parse_options(model: type[M], options: Mapping[str, Any], engine: str) -> dict[str, Any]:
    """The options given, checked against ``model`` and converted: ``{name: value}``.

    InvalidInputError for a value of the wrong type (its message says which) or an
    option ``model`` does not declare (``unknown options for <engine>: [...]; known: ...``).
    """
    try:
        parsed = model.model_validate(dict(options))
    except ValidationError as exc:
        raise _refusal(model, exc, engine) from None
    return {name: getattr(parsed, name) for name in model.model_fields if name in parsed.model_fields_set}


def _refusal(model: type[EngineOptions], exc: ValidationError, engine: str) -> InvalidInputError:
    unknown = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        if error["type"] == "extra_forbidden":
            unknown.append(name)
            continue
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, InvalidInputError):
            return cause
        # a type pydantic itself refused: never its own text, which quotes the value
        shown = "" if is_secret_option(name) else f", got {error['input']!r}"
        return InvalidInputError(f"option {name} is not valid ({error['msg']}){shown}")
    return InvalidInputError(f"unknown options for {engine}: {sorted(unknown)}; known: {', '.join(model.model_fields)}")
