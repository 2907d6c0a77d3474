"""Building blocks shared by the ``LLMDeployment`` models: the base model, CEL rules, and the scalar types.

The API exists twice — as pydantic models (what the operator, the recommender and the tests read) and as the
CRD's OpenAPI schema (what the API server enforces at ``kubectl apply``). Both are generated from the classes
here so they cannot disagree:

* :class:`ApiModel` fixes the conventions for every object: camelCase names in YAML/JSON (``populate_by_name``
  keeps snake_case usable from Python), unknown fields rejected (``extra="forbid"``, like strict field
  validation on the server), no type coercion (``strict``: the API server refuses ``"4"`` for an
  integer, so do we), and field descriptions taken from attribute docstrings.
* :class:`Rule` is one cross-field rule written twice, side by side: a CEL expression for the API server's
  ``x-kubernetes-validations`` and a Python predicate with the same meaning. ``ApiModel`` runs the predicates
  after validation and emits the CEL into the JSON schema, so a rule cannot be added to one layer only.
* The scalar types (:data:`IntOrAuto`, :data:`FractionOrAuto`, :data:`Quantity`, :data:`ModelURI`) carry their
  own Python validator and the exact schema fragment the API server needs (``x-kubernetes-int-or-string``,
  field-level CEL), with the same error message in both layers.

Pure: no Kubernetes client, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel

GROUP: Final = "tidal.dev"
"""API group of the ``LLMDeployment`` resource."""
VERSION: Final = "v1alpha1"
"""The only version, served and stored."""
API_VERSION: Final = "tidal.dev/v1alpha1"
KIND: Final = "LLMDeployment"
PLURAL = "llmdeployments"
SINGULAR = "llmdeployment"
SHORT_NAMES = ("llmd",)
CATEGORIES = ("all", "tidal")

AUTO: Final = "auto"
"""The value that lets Tidal choose an engine setting (the recommender's value, or vLLM's default)."""


@dataclass(frozen=True)
class Rule:
    """A validation rule enforced by both the API server (CEL) and the pydantic model (``check``).

    ``message`` must name the offending field by its full path (``spec.minReplicas``), since it is the whole
    error the user sees from either layer (pydantic reports it at the object, not the field). Every object
    type appears at one place in the API, so the full path is known where the rule is written.
    ``field_path`` (relative to the object the rule sits on, e.g. ``.minReplicas``) makes the API server
    report the error at that field instead of at the object.
    """

    cel: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None
    reason: str | None = None
    """``FieldValueInvalid`` (default), ``FieldValueRequired``, ``FieldValueForbidden`` or
    ``FieldValueDuplicate``."""
    message_expression: str | None = None
    """A CEL expression for the message (``messageExpression``) when it must name the offending value (the
    flag in ``extraArgs``); ``message`` stays the fallback the API server uses if the expression fails."""
    explain: Callable[[Any], str] | None = None
    """The Python side of ``message_expression``: the message for an object that fails ``check``."""

    def error(self, obj: Any) -> str:
        """The message for ``obj``, which failed ``check``."""
        return self.explain(obj) if self.explain is not None else self.message

    def to_schema(self) -> dict[str, str]:
        """The ``x-kubernetes-validations`` entry."""
        out = {"rule": self.cel, "message": self.message}
        if self.message_expression:
            out["messageExpression"] = self.message_expression
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


class ApiModel(BaseModel):
    """Base of every API object: camelCase aliases, unknown fields rejected, strict types, CEL mirrored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        use_attribute_docstrings=True,
        validate_default=False,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = ()
    """Cross-field rules of this object; each is checked here and emitted as CEL into the CRD."""

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        for rule in type(self).__rules__:
            if not rule.check(self):
                raise ValueError(rule.error(self))
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> Any:
        schema = handler(core_schema)
        if cls.__rules__:
            target = handler.resolve_ref_schema(schema)
            target["x-kubernetes-validations"] = [r.to_schema() for r in cls.__rules__]
        return schema

    def to_dict(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase keys, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# --------------------------------------------------------------------------------------------------- scalars

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
"""Pattern of an object name of up to 253 characters (Secret, ConfigMap, claim, ServiceAccount)."""
DATA_KEY = r"^[-._a-zA-Z0-9]+$"
"""Pattern of a key in a Secret's or ConfigMap's data."""

PositiveInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
ShortStr = Annotated[str, Field(max_length=1024)]

_INT_OR_AUTO_MSG = 'must be a positive integer or "auto"'


def _int_or_auto(value: Any) -> int | Literal["auto"]:
    if value == AUTO and isinstance(value, str):
        return AUTO
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(_INT_OR_AUTO_MSG)


IntOrAuto = Annotated[
    int | Literal["auto"],
    PlainValidator(_int_or_auto),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-validations": [
                {"rule": "type(self) == string ? self == 'auto' : self >= 1", "message": _INT_OR_AUTO_MSG}
            ],
        }
    ),
]
"""A positive integer, or ``"auto"``. In the CRD: ``x-kubernetes-int-or-string`` plus a CEL rule that the
string is exactly ``auto`` and the integer is at least 1."""

_FRACTION_MSG = 'must be "auto" or a decimal string in (0, 1], for example "0.9"'


def parse_fraction(value: str) -> float | None:
    """``None`` for ``"auto"``, else the float of a fraction string (already validated)."""
    return None if value == AUTO else float(value)


def _fraction_or_auto(value: Any) -> str:
    if isinstance(value, str) and (
        value == AUTO or (re.fullmatch(r"[0-9]*\.?[0-9]+", value) and 0.0 < float(value) <= 1.0)
    ):
        return value
    raise ValueError(_FRACTION_MSG)


FractionOrAuto = Annotated[
    str,
    PlainValidator(_fraction_or_auto),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": 32,
            "x-kubernetes-validations": [
                {
                    "rule": "self == 'auto' || (self.matches('^[0-9]*[.]?[0-9]+$') "
                    "&& double(self) > 0.0 && double(self) <= 1.0)",
                    "message": _FRACTION_MSG,
                }
            ],
        }
    ),
]
"""``"auto"`` or a fraction in (0, 1] written as a decimal *string* (``"0.92"``). A string because the API
server's int-or-string type cannot hold a float; the CEL rule parses it and checks the range."""

QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
"""Kubernetes ``resource.Quantity`` syntax (the pattern controller-gen emits for quantities)."""
_QUANTITY_MSG = 'must be a Kubernetes quantity such as "16Gi", "500m" or 8'


def _quantity(value: Any) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if (
        isinstance(value, str)
        and len(value) <= 64
        and not value.startswith("-")
        and re.fullmatch(QUANTITY_PATTERN, value)
    ):
        return value
    raise ValueError(_QUANTITY_MSG)


Quantity = Annotated[
    int | str,
    PlainValidator(_quantity),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "maxLength": 64,
            "x-kubernetes-validations": [
                {
                    "rule": "type(self) == string ? !self.startsWith('-') : self >= 0",
                    "message": _QUANTITY_MSG,
                }
            ],
        }
    ),
]
"""A non-negative Kubernetes quantity (``16Gi``, ``500m``, ``8``)."""

MODEL_URI_PATTERN = (
    r"^(hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9][A-Za-z0-9._/-]*)?"
    r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[A-Za-z0-9._@+=-]+)*/?"
    r"|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9!_.*'()/@+=-]*)?)$"
)
"""``hf://org/name[@revision]``, ``pvc://claim[/path]`` or ``s3://bucket[/prefix]``."""
_URI_MSG = "must be hf://org/name[@revision], pvc://claim/path or s3://bucket/prefix"


def _model_uri(value: Any) -> str:
    if isinstance(value, str) and len(value) <= 512 and re.fullmatch(MODEL_URI_PATTERN, value):
        return value
    raise ValueError(_URI_MSG)


ModelURI = Annotated[
    str,
    PlainValidator(_model_uri),
    WithJsonSchema({"type": "string", "maxLength": 512, "pattern": MODEL_URI_PATTERN}),
]
"""Where the weights come from; see :data:`MODEL_URI_PATTERN`."""
