"""How the tenant commands print objects: a table for people, JSON or YAML for scripts.

`-o json` prints one object as is, several as a `v1 List` (kubectl's shape); `-o yaml` the
same in YAML. The table's columns are the kind's CRD printer columns (the ones
`kubectl get` shows, from the API models), so both tools agree; `describe` adds every
condition (type, status, reason, message, age), which is where a failure's reason is.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml

from tramontane_api.v1alpha1 import KindInfo

FORMATS = ("table", "json", "yaml")
_FILTER = re.compile(r'^(\w+)\[\?\(@\.(\w+)=="([^"]*)"\)\]$')


def add_output_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", choices=FORMATS, default="table", help="output format (default: table)"
    )


def dump(objects: Sequence[Mapping[str, Any]], fmt: str, *, single: bool) -> str:
    """JSON or YAML text of one object (`single`) or a List of them."""
    doc: Any = (
        objects[0]
        if single and len(objects) == 1
        else {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    )
    if fmt == "json":
        return json.dumps(doc, indent=2, sort_keys=False)
    return yaml.safe_dump(doc, sort_keys=False).rstrip("\n")


def json_path(obj: Any, path: str) -> Any:
    """The value at a printer column's JSONPath (`.a.b`, `.list[?(@.type=="Ready")].field`)."""
    value: Any = obj
    for part in path.lstrip(".").split("."):
        match = _FILTER.match(part)
        if match:
            key, field, wanted = match.groups()
            items = value.get(key) if isinstance(value, Mapping) else None
            value = next(
                (i for i in items or [] if isinstance(i, Mapping) and i.get(field) == wanted), None
            )
        else:
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is None:
            return None
    return value


def age(timestamp: Any, now: datetime | None = None) -> str:
    """`5s`, `3m`, `2h`, `4d` since an RFC 3339 time; `-` without one."""
    if not isinstance(timestamp, str) or not timestamp:
        return "-"
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    seconds = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def cell(value: Any, type_: str) -> str:
    if value is None or value == "":
        return "-"
    if type_ == "date":
        return age(value)
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def table(objects: Sequence[Mapping[str, Any]], info: KindInfo, *, wide: bool = False) -> str:
    """The objects as `kubectl get` prints them: NAME (NAMESPACE first when namespaced), then
    the kind's printer columns (priority-0 ones unless `wide`)."""
    columns = [c for c in info.printer_columns if wide or c.priority == 0]
    header = (["NAMESPACE"] if info.scope == "Namespaced" else []) + ["NAME"]
    header += [c.name.upper() for c in columns]
    rows = [header]
    for obj in objects:
        meta = obj.get("metadata") or {}
        row = ([str(meta.get("namespace") or "-")] if info.scope == "Namespaced" else []) + [
            str(meta.get("name"))
        ]
        row += [cell(json_path(obj, c.json_path), c.type) for c in columns]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def conditions(obj: Mapping[str, Any]) -> list[str]:
    """One line per condition: `Type=Status Reason: message (age)`."""
    lines = []
    for c in (obj.get("status") or {}).get("conditions") or []:
        if not isinstance(c, Mapping):
            continue
        reason = f" {c['reason']}" if c.get("reason") else ""
        message = f": {c['message']}" if c.get("message") else ""
        when = age(c.get("lastTransitionTime"))
        lines.append(f"  {c.get('type')}={c.get('status')}{reason}{message} ({when} ago)")
    return lines


def describe(obj: Mapping[str, Any], info: KindInfo) -> str:
    """One object for people: its printer columns as `Field: value`, then its conditions."""
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if info.scope == "Namespaced":
        name = f"{meta.get('namespace')}/{name}"
    lines = [f"{info.kind} {name}"]
    for column in info.printer_columns:
        value = json_path(obj, column.json_path)
        if value is not None:
            lines.append(f"  {column.name}: {cell(value, column.type)}")
    found = conditions(obj)
    lines.append("Conditions:" if found else "Conditions: none reported yet")
    lines += found
    return "\n".join(lines)
