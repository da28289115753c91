"""Write docs/api.md from the service's OpenAPI schema.

    python scripts/gen_api_docs.py            # (re)write docs/api.md
    python scripts/gen_api_docs.py --check    # exit 1 if docs/api.md is out of date

The schema comes from the app itself (built over an empty temporary project), so the page always
matches the code: endpoints, parameters with their limits, bodies, responses and models.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "api.md"
METHOD_ORDER = ("get", "post", "put", "delete")

INTRO = """\
# REST API reference

Generated from the OpenAPI schema by `scripts/gen_api_docs.py`; do not edit by hand. The running
service serves the same schema at `GET /v1/openapi.json`. How to run the service, its settings
and its security decisions: [serving.md](serving.md).

- Base path: `/v1`. Bodies are JSON, except uploads, which are `multipart/form-data`.
- Writes (`PUT`, `DELETE`) need the API key, sent as `X-API-Key: <key>` or
  `Authorization: Bearer <key>`: missing -> 401 `unauthorized`, wrong -> 403 `forbidden`; a
  read-only service answers 403 `read_only`.
- Every error has the same shape:

  ```json
  {"error": {"code": "not_found", "message": "unknown item 'x'"}}
  ```

  Codes: `invalid_request` (422: a parameter or body field is malformed), `invalid_filter`
  (422: a filter names a value the catalogue lacks, or an empty price range), `image_rejected`
  (422, or 413 for `too-large`; `reason` is one of `empty`, `not-an-image`, `truncated`,
  `unsupported`, `too-large`, `unreadable`), `too_large` (413: upload above the byte cap),
  `not_found` (404), `method_not_allowed` (405), `unauthorized` (401), `forbidden` and
  `read_only` (403), `not_ready` (503: no index yet), `server_error` / `internal_error` (500,
  details only in the service log).

## Example

```bash
curl -s localhost:8000/v1/items/15970/similar?k=5
curl -s -F image=@photo.jpg -F k=5 -F gender=Women localhost:8000/v1/search
curl -s -X PUT -H "X-API-Key: $LOOKALIKE_API_KEY" -F image=@new.jpg \\
     -F 'attributes={"title": "Red dress", "category": "Dresses", "price": 39.9}' \\
     localhost:8000/v1/items/new-123
```
"""


def build_schema() -> dict[str, Any]:
    from lookalike import Project
    from lookalike.serve.app import create_app
    from lookalike.serve.settings import ServeSettings

    with tempfile.TemporaryDirectory() as folder:
        Project(folder).close()  # an empty project: enough to build the app
        app = create_app(ServeSettings(project=Path(folder), read_only=True))
        return app.openapi()


def render(schema: dict[str, Any]) -> str:
    components = schema.get("components", {}).get("schemas", {})
    lines = [INTRO]
    lines.append(f"Version {schema['info']['version']} ({schema['openapi']}).\n")
    lines.append("## Endpoints\n")
    lines.append("| Method | Path | Summary |")
    lines.append("|---|---|---|")
    operations = _operations(schema)
    for method, path, op in operations:
        lines.append(f"| {method.upper()} | `{path}` | {op.get('summary', '')} |")
    lines.append("")
    for method, path, op in operations:
        lines += _render_operation(method, path, op, components)
    lines.append("## Models\n")
    for name in sorted(components):
        if name.startswith(("Body_", "HTTPValidationError", "ValidationError")):
            continue
        lines += _render_model(name, components[name], components)
    return "\n".join(lines).rstrip() + "\n"


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for path, item in schema["paths"].items():
        for method in METHOD_ORDER:
            if method in item:
                out.append((method, path, item[method]))
    return out


def _render_operation(method: str, path: str, op: dict[str, Any],
                      components: dict[str, Any]) -> list[str]:
    lines = [f"### {method.upper()} `{path}`\n"]
    if op.get("description"):
        lines.append(" ".join(op["description"].split()) + "\n")
    if op.get("security"):
        lines.append("Needs the API key (`X-API-Key` or `Authorization: Bearer`).\n")
    params = op.get("parameters", [])
    if params:
        lines.append("| Parameter | In | Type | Required | Description |")
        lines.append("|---|---|---|---|---|")
        for param in params:
            lines.append(f"| `{param['name']}` | {param['in']} | "
                         f"{_type(param.get('schema', {}), components)} | "
                         f"{'yes' if param.get('required') else 'no'} | "
                         f"{_cell(param.get('description') or param.get('schema', {}).get('description', ''))} |")
        lines.append("")
    body = op.get("requestBody")
    if body:
        for media, content in body.get("content", {}).items():
            model = _resolve(content.get("schema", {}), components)
            lines.append(f"Request body (`{media}`):\n")
            lines.append("| Field | Type | Required | Description |")
            lines.append("|---|---|---|---|")
            required = set(model.get("required", []))
            for name, prop in model.get("properties", {}).items():
                lines.append(f"| `{name}` | {_type(prop, components)} | "
                             f"{'yes' if name in required else 'no'} | "
                             f"{_cell(prop.get('description', ''))} |")
            lines.append("")
    lines.append("| Status | Meaning | Body |")
    lines.append("|---|---|---|")
    for status, response in sorted(op.get("responses", {}).items()):
        if status == "422" and _is_fastapi_validation(response):
            lines.append("| 422 | Invalid request | `ErrorResponse` |")
            continue
        content = response.get("content", {})
        body_type = ", ".join(
            f"`{_ref_name(c.get('schema', {}))}`" if _ref_name(c.get("schema", {}))
            else f"`{media}`" for media, c in content.items()) or "-"
        lines.append(f"| {status} | {_cell(response.get('description', ''))} | {body_type} |")
    lines.append("")
    return lines


def _render_model(name: str, model: dict[str, Any], components: dict[str, Any]) -> list[str]:
    lines = [f"### {name}\n"]
    if model.get("description"):
        lines.append(" ".join(model["description"].split()) + "\n")
    properties = model.get("properties", {})
    if properties:
        required = set(model.get("required", []))
        lines.append("| Field | Type | Required | Description |")
        lines.append("|---|---|---|---|")
        for field, prop in properties.items():
            lines.append(f"| `{field}` | {_type(prop, components)} | "
                         f"{'yes' if field in required else 'no'} | "
                         f"{_cell(prop.get('description', ''))} |")
        lines.append("")
    return lines


def _is_fastapi_validation(response: dict[str, Any]) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return _ref_name(schema) == "HTTPValidationError"


def _ref_name(schema: dict[str, Any]) -> str | None:
    ref = schema.get("$ref")
    return ref.rsplit("/", 1)[-1] if ref else None


def _resolve(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    name = _ref_name(schema)
    return components.get(name, {}) if name else schema


def _type(schema: dict[str, Any], components: dict[str, Any]) -> str:
    name = _ref_name(schema)
    if name:
        return f"`{name}`"
    if "anyOf" in schema:
        parts = [_type(s, components) for s in schema["anyOf"] if s.get("type") != "null"]
        nullable = any(s.get("type") == "null" for s in schema["anyOf"])
        text = " or ".join(parts) or "any"
        return text + (" (optional)" if nullable else "")
    kind = schema.get("type", "any")
    if kind == "array":
        text = f"list of {_type(schema.get('items', {}), components)}"
    elif kind == "string" and (schema.get("format") == "binary"
                               or "contentMediaType" in schema):
        text = "file"
    elif "enum" in schema:
        text = " \\| ".join(f"`{v}`" for v in schema["enum"])
    elif "const" in schema:
        text = f"`{schema['const']}`"
    else:
        text = str(kind)
    limits = []
    for key, label in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                       ("minLength", "length >="), ("maxLength", "length <="),
                       ("pattern", "pattern")):
        if key in schema:
            value = schema[key]
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            limits.append(f"{label} `{value}`" if key == "pattern" else f"{label} {value}")
    if "default" in schema and schema["default"] is not None:
        limits.append(f"default {json.dumps(schema['default'])}")
    return text + (f" ({', '.join(limits)})" if limits else "")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def main() -> int:
    parser = argparse.ArgumentParser(description="Generate docs/api.md from the OpenAPI schema.")
    parser.add_argument("--check", action="store_true", help="fail if docs/api.md is stale")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    text = render(build_schema())
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is out of date: run python scripts/gen_api_docs.py",
                  file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
