"""The field types of recipes and requests: numbers as JSON has them, and closed models.

Lax pydantic reads `true` as 1 and "0.5" as 0.5; these refuse both, so a request means what
its JSON says. Closed models refuse unknown keys: a typo such as `learning_rte` would
otherwise train with the default and nobody would notice.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Strict, Tag
from pydantic_core import PydanticCustomError


def _json_number(value: Any) -> Any:
    """A number as JSON has it. Lax mode reads `true` as 1 and "0.5" as 0.5: a request's
    `"max_steps": true` trained one step, and `"learning_rate": false` was accepted."""
    if isinstance(value, bool | str | bytes | bytearray):
        raise PydanticCustomError("number_type", "Input should be a number, not {kind}",
                                  {"kind": "a boolean" if isinstance(value, bool) else "text"})
    return value


# The tags keep the error locations in a union as lax mode named them (`learning_rate.float`).
# An optional number's bounds go before NUMBER in an `Annotated` of its own: on the field, or
# after NUMBER, they reach the JSON Schema as `ge`/`le` instead of `minimum`/`maximum`.
NUMBER = BeforeValidator(_json_number)


Int = Annotated[int, NUMBER, Tag("int")]
"""An integer: a number without a fractional part (1.0 too, as in JSON Schema), never a
boolean or a string."""


Float = Annotated[float, NUMBER, Tag("float")]
"""A number, never a boolean or a string."""


Bool = Annotated[bool, Strict()]
"""true or false, never 0, 1, "yes" or "true"."""


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def given(*names: str) -> dict[str, Any]:
    """JSON Schema: each of `names` is present and not null (null is as good as absent), for
    the rules between fields that a model's validator checks and its schema must say too."""
    return {"required": list(names), "properties": {n: {"not": {"type": "null"}} for n in names}}
