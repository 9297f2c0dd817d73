"""The values a ClickHouse column holds on a given server, as pydantic constraints. Pure.

The column type is the contract: each field's column type (from `chute.typemap.columns_for`,
including raw `ClickHouseType(...)` strings, which are parsed here, not trusted) decides which
values the field accepts. `constrained_model` derives from the user's model a subclass whose
fields carry those constraints; the ingest API and the sync worker validate with it, so both
sides refuse exactly the same values. Most checks are pydantic-core's own (ge/le,
max_digits/decimal_places, allow_inf_nan), so they cost next to nothing; the few that pydantic
cannot express (FixedString byte length, sub-second digits, Enum labels) are small functions.

What each leaf column type holds is `chute.column_rules`, per type family; this module walks a
field's annotation and its column type together (Nullable, Array, Annotated, unions) and puts
those rules on the leaves.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

from chute.annotations import AllowNonFinite
from chute.chtypes import ChType, TypeSyntaxError, parse_type
from chute.column_rules import leaf_rule
from chute.column_rules.base import RuleContext
from chute.server import ServerProfile
from chute.typemap import ColumnSpec

Extra = Literal["ignore", "reject"]


@dataclass(frozen=True)
class FieldRule:
    column: str
    column_type: str
    holds: str  # what the innermost type accepts, e.g. "integers 0 .. 255"
    constrained: bool  # the column holds fewer values than the field's Python type

    def explain(self) -> str:
        return f"column {self.column} is {self.column_type}, which holds {self.holds}"


def _constrain(tp: Any, ch: ChType, ctx: RuleContext) -> Any:
    """tp with the constraints of column type ch added at every leaf."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        inner, *extras = typing.get_args(tp)
        return Annotated[(_constrain(inner, ch, ctx.with_markers(extras)), *extras)]
    ch = ch.unwrapped()
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise ctx.refuse(f"only `T | None` unions are supported, got {tp!r}")
        if ch.name != "Nullable":
            raise ctx.refuse(f"the field is optional but its column {ch} is not Nullable: "
                             "None would be stored as a default value")
        return typing.Optional[_constrain(args[0], ch.arg_type(), ctx)]  # noqa: UP045
    if ch.name == "Nullable":
        return _constrain(tp, ch.arg_type(), ctx)
    if origin in (list, tuple, set, frozenset) or origin is Sequence:
        if ch.name != "Array":
            raise ctx.refuse(f"a sequence field needs an Array column, not {ch}")
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if len(args) != 1:
            raise ctx.refuse(f"arrays need one element type, got {tp!r}")
        element = _constrain(args[0], ch.arg_type(), ctx)
        if origin is tuple:
            return tuple[element, ...]  # type: ignore[valid-type]
        return origin[element]
    if origin is Literal:
        leaf: Any = typing.get_args(tp)
    elif origin is dict:
        leaf = dict
    else:
        leaf = tp
    rule = leaf_rule(ch, leaf, ctx)
    ctx.holds.append(rule.holds)
    ctx.constrained.append(bool(rule.metadata))
    if not rule.metadata:
        return tp
    return Annotated[(tp, *rule.metadata)]


@dataclass(frozen=True)
class ConstrainedModel:
    """The derived model and, per field (by name and alias), what its column holds."""

    model: type[BaseModel]
    rules: dict[str, FieldRule]
    non_finite_floats: bool  # some field opted into NaN/Infinity
    decimals: bool  # some column is a Decimal: JSON numbers must be read exactly


def field_rule(model: type[BaseModel], column: ColumnSpec, profile: ServerProfile,
               ) -> tuple[Any, FieldRule, RuleContext]:
    info = model.model_fields[column.name]
    ctx = RuleContext(profile, f"field {model.__name__}.{column.name}").with_markers(info.metadata)
    try:
        ch = parse_type(column.type)
    except TypeSyntaxError as exc:
        raise ctx.refuse(str(exc)) from None
    annotation = _constrain(info.annotation, ch, ctx)
    holds = "; ".join(dict.fromkeys(ctx.holds))
    return annotation, FieldRule(column.name, column.type, holds, any(ctx.constrained)), ctx


def constrained_model(model: type[BaseModel], columns: Sequence[ColumnSpec],
                      profile: ServerProfile, extra: Extra = "ignore") -> ConstrainedModel:
    """A subclass of `model` whose fields accept only what their columns hold on `profile`.

    Validators, aliases and defaults of `model` are kept (it is a subclass). `extra`:
    "ignore" drops unknown fields (unless the model itself forbids them), "reject" refuses them.
    Raises UnsupportedTypeError for a field whose column cannot hold its Python type exactly.
    """
    annotations: dict[str, Any] = {}
    namespace: dict[str, Any] = {}
    rules: dict[str, FieldRule] = {}
    non_finite = decimals = False
    for column in columns:
        annotation, rule, ctx = field_rule(model, column, profile)
        info = model.model_fields[column.name]
        annotations[column.name] = (Annotated[(annotation, *info.metadata)] if info.metadata
                                    else annotation)
        namespace[column.name] = _copy_field(info)
        rules[column.name] = rule
        if info.alias:
            rules[info.alias] = rule
        non_finite = non_finite or _mentions(info, AllowNonFinite) or ctx.allow_non_finite
        decimals = decimals or "Decimal" in column.type
    config = ConfigDict(**model.model_config)
    forbids = model.model_config.get("extra") == "forbid"
    config["extra"] = "forbid" if extra == "reject" or forbids else "ignore"
    if non_finite:
        # Kafka carries NaN/Infinity as the JSON strings "NaN"/"Infinity"/"-Infinity".
        config["ser_json_inf_nan"] = "strings"
    namespace.update({"__annotations__": annotations, "model_config": config,
                      "__module__": model.__module__, "__qualname__": model.__qualname__,
                      "__doc__": model.__doc__})
    derived = types.new_class(model.__name__, (model,), {},
                              lambda ns: ns.update(namespace))
    return ConstrainedModel(derived, rules, non_finite, decimals)


def _copy_field(info: FieldInfo) -> FieldInfo:
    """The field's settings (default, alias, description...) without its annotation's metadata,
    which the new annotation carries."""
    attributes = {name: getattr(info, name) for name in (
        "alias", "validation_alias", "serialization_alias", "title", "description",
        "examples", "exclude", "json_schema_extra", "frozen", "repr")
        if getattr(info, name, None) is not None}
    copy: FieldInfo
    if info.default_factory is not None:
        copy = Field(default_factory=info.default_factory, **attributes)
    else:
        copy = Field(info.default, **attributes)
    return copy


def _mentions(info: FieldInfo, marker: type[Any]) -> bool:
    if any(isinstance(m, marker) for m in info.metadata):
        return True
    stack = [info.annotation]
    while stack:
        tp = stack.pop()
        if typing.get_origin(tp) is Annotated and any(
                isinstance(m, marker) for m in typing.get_args(tp)[1:]):
            return True
        stack.extend(a for a in typing.get_args(tp) if not isinstance(a, str | int))
    return False
