"""Building blocks shared by every tramontane.dev/v1alpha1 kind.

`ApiModel` fixes the wire conventions (camelCase in YAML, unknown fields rejected); the small
types here (conditions, quantities, selectors, references) appear in several kinds. Schema
extras that only Kubernetes understands (`x-kubernetes-*`, CEL rules) are attached with
`rules()` / `list_map()` so the CRD generator finds them in the JSON schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

GROUP = "tramontane.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "tramontane"

# Kubernetes quantity ("500m", "16Gi", 2): int-or-string with the API server's own pattern.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


def _quantity_text(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Quantity = Annotated[
    str,
    BeforeValidator(_quantity_text),
    Field(pattern=QUANTITY_PATTERN),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
        }
    ),
]

# DNS-1123 label: names that end up in child object names, label values and cluster names.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]

# GPU types are free-form keys shared by quotas, capacities, prices and requests ("H100",
# "A100-80GB", "L4"); the same string must be used everywhere.
GPU_TYPE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
GpuType = Annotated[str, Field(pattern=GPU_TYPE_PATTERN)]

# URIs the runtime can read models and datasets from.
MODEL_URI_PATTERN = r"^(hf|az|s3|gs|pvc|file)://.+$"
ModelUri = Annotated[
    str,
    Field(
        pattern=MODEL_URI_PATTERN,
        description="hf://org/name, az://container/path, s3://bucket/path, gs://bucket/path, "
        "pvc://claim/path or file:///path.",
    ),
]
DATA_URI_PATTERN = r"^(az|s3|gs|pvc|file)://.+$"
DataUri = Annotated[
    str,
    Field(
        pattern=DATA_URI_PATTERN,
        description="az://, s3://, gs://, pvc:// or file:// URI.",
    ),
]


# Plain-words explanations of the patterns above, used in error messages.
PATTERN_HINTS: dict[str, str] = {
    QUANTITY_PATTERN: "must be a Kubernetes quantity such as 500m, 4 or 16Gi",
    DNS_LABEL_PATTERN: "must be a DNS label: lowercase letters, digits and '-', "
    "starting and ending with a letter or digit",
    GPU_TYPE_PATTERN: "must be a GPU type name such as H100 or A100-80GB "
    "(letters, digits, '.', '_', '-')",
    MODEL_URI_PATTERN: "must be a URI with scheme hf://, az://, s3://, gs://, pvc:// or file://",
    DATA_URI_PATTERN: "must be a URI with scheme az://, s3://, gs://, pvc:// or file://",
}


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields are errors."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )


@dataclass(frozen=True)
class Rule:
    """One CEL validation rule, exactly as Kubernetes' `x-kubernetes-validations` entry."""

    rule: str
    message: str
    field_path: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


def rules(*items: Rule) -> dict[str, Any]:
    """Schema extra attaching CEL rules to a model or field."""
    return {"x-kubernetes-validations": [r.to_dict() for r in items]}


def config_with_rules(*items: Rule) -> ConfigDict:
    """`ApiModel`'s config plus object-level CEL rules."""
    return ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        json_schema_extra=rules(*items),
    )


def list_map(*keys: str) -> dict[str, Any]:
    """Schema extra: a list whose items are unique by `keys` (Kubernetes list-type map)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


LIST_SET: dict[str, Any] = {"x-kubernetes-list-type": "set"}


def immutable(name: str) -> dict[str, Any]:
    """Schema extra: the field cannot change once the object exists (a transition rule)."""
    return rules(
        Rule(
            "self == oldSelf",
            f"{name} is immutable; create a new object to change it",
            reason="FieldValueForbidden",
        )
    )


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """The standard Kubernetes condition (metav1.Condition)."""

    type: Annotated[str, Field(max_length=316)]
    status: ConditionStatus
    reason: Annotated[
        str, Field(max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    ]
    message: Annotated[str, Field(max_length=32768)] = ""
    last_transition_time: datetime
    observed_generation: Annotated[int, Field(ge=0)] | None = None


Conditions = Annotated[list[Condition], Field(json_schema_extra=list_map("type"))]


class LocalObjectReference(ApiModel):
    """A reference to an object of a known kind in the same namespace."""

    name: DnsLabel


class SecretKeyReference(ApiModel):
    """A key in a Secret; cluster-scoped kinds must name the Secret's namespace."""

    namespace: DnsLabel
    name: Annotated[str, Field(min_length=1, max_length=253)]
    key: Annotated[str, Field(min_length=1)]


class Toleration(ApiModel):
    """The fields of core/v1 Toleration."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class LabelSelectorRequirement(ApiModel):
    key: Annotated[str, Field(min_length=1)]
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None


class LabelSelector(ApiModel):
    """metav1.LabelSelector: matchLabels and matchExpressions, all must match."""

    match_labels: dict[str, str] | None = None
    match_expressions: list[LabelSelectorRequirement] | None = None


class ObjectMeta(BaseModel):
    """The metadata fields our code reads; everything else is kept as is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, alias_generator=to_camel)

    name: Annotated[str, Field(min_length=1, max_length=253)]
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    generation: int | None = None
    uid: str | None = None


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: str
    description: str = ""
    priority: int = 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            out["description"] = self.description
        if self.priority:
            out["priority"] = self.priority
        return out


@dataclass(frozen=True)
class ScaleSubresource:
    spec_replicas_path: str
    status_replicas_path: str
    label_selector_path: str | None = None


@dataclass(frozen=True)
class KindInfo:
    """What the CRD generator and the operator need to know about a root kind."""

    kind: str
    plural: str
    singular: str
    scope: Literal["Namespaced", "Cluster"]
    short_names: tuple[str, ...] = ()
    printer_columns: tuple[PrinterColumn, ...] = ()
    scale: ScaleSubresource | None = None
    root_rules: tuple[Rule, ...] = field(default_factory=tuple)

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


READY_COLUMN = PrinterColumn(
    "Ready", "string", '.status.conditions[?(@.type=="Ready")].status', "Ready condition"
)
PHASE_COLUMN = PrinterColumn("Phase", "string", ".status.phase", "Summary of the conditions")
AGE_COLUMN = PrinterColumn("Age", "date", ".metadata.creationTimestamp")


class Resource(ApiModel):
    """Base of a root kind: apiVersion, kind, metadata; subclasses add spec and status."""

    KIND_INFO: ClassVar[KindInfo]

    api_version: Literal["tramontane.dev/v1alpha1"] = "tramontane.dev/v1alpha1"
    metadata: ObjectMeta
