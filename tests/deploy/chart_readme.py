"""Generate charts/blend-scaler/README.md from README.md.gotmpl and the `# --`
comments of values.yaml (the helm-docs convention).

helm-docs is a Go binary that is not packaged for Debian or PyPI, so this does
the part the chart uses by hand: the template's `{{ template "chart.valuesTable" . }}`
becomes a Key | Type | Default | Description table with one row per leaf value,
and `{{ template "chart.version" . }}` / `{{ template "chart.appVersion" . }}`
come from Chart.yaml. A comment block starting with `# --` documents the key on
the line after it; a `# --` block on a mapping documents the mapping as one row
(its children are not listed separately, as in helm-docs).

    python tests/deploy/chart_readme.py --update   rewrite README.md
    python tests/deploy/chart_readme.py --check    exit 1 if README.md is stale
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "blend-scaler"
TEMPLATE = CHART / "README.md.gotmpl"
README = CHART / "README.md"

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-]+|\"[^\"]+\"):(?:\s|$)")
_DOC_START = re.compile(r"^\s*# -- ?(?P<text>.*)$")
_COMMENT = re.compile(r"^\s*# ?(?P<text>.*)$")


def documented_keys(values_text: str) -> dict[tuple[str, ...], str]:
    """Key path -> description, for every key preceded by a `# --` block."""
    docs: dict[tuple[str, ...], str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    list_indent: int | None = None  # inside a block sequence: its keys are not values of the chart
    for line in values_text.splitlines():
        start = _DOC_START.match(line)
        if start:
            pending = [start.group("text").strip()]
            continue
        comment = _COMMENT.match(line)
        if comment and line.lstrip().startswith("#"):
            if pending is not None:
                pending.append(comment.group("text").strip())
            continue
        if not line.strip():
            pending = None
            continue
        indent = len(line) - len(line.lstrip(" "))
        if list_indent is not None:
            if indent > list_indent or line.lstrip().startswith("- ") and indent == list_indent:
                continue
            list_indent = None
        if line.lstrip().startswith("- "):
            list_indent = indent
            pending = None
            continue
        m = _KEY.match(line)
        if not m:
            pending = None
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = m.group("key").strip('"')
        path = tuple(k for _, k in stack) + (key,)
        stack.append((indent, key))
        if pending is not None:
            docs[path] = " ".join(p for p in pending if p)
        pending = None
    return docs


def _type_of(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if value is None:
        return "string"
    return "object"


def _default(value) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return "`" + text.replace("|", "\\|") + "`"


def rows(values: dict, docs: dict[tuple[str, ...], str]) -> list[tuple[str, str, str, str]]:
    out: list[tuple[str, str, str, str]] = []

    def walk(node, path: tuple[str, ...]):
        if isinstance(node, dict) and node and path not in docs:
            for k, v in node.items():
                walk(v, path + (k,))
            return
        if not path:
            return
        out.append((".".join(path), _type_of(node), _default(node), docs.get(path, "")))

    walk(values, ())
    return out


def values_table(values_text: str) -> str:
    values = yaml.safe_load(values_text) or {}
    lines = ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for key, typ, default, desc in rows(values, documented_keys(values_text)):
        cell = desc.replace("|", "\\|")
        lines.append(f"| `{key}` | {typ} | {default} | {cell} |")
    return "\n".join(lines)


def generate(chart: Path = CHART) -> str:
    template = (chart / "README.md.gotmpl").read_text()
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    values_text = (chart / "values.yaml").read_text()
    table = '{{ template "chart.valuesTable" . }}'
    out = template.replace('{{ template "chart.version" . }}', str(meta["version"]))
    out = out.replace('{{ template "chart.appVersion" . }}', str(meta.get("appVersion", "")))
    leftover = re.search(r"\{\{[^}]*\}\}", out.replace(table, ""))
    if leftover:
        raise ValueError(f"README.md.gotmpl: unsupported template action {leftover.group(0)}")
    out = out.replace(table, values_table(values_text))
    return out.rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    if argv == ["--update"]:
        text = generate()
        if not README.exists() or README.read_text() != text:
            README.write_text(text)
            print(f"wrote {README}")
        return 0
    if argv == ["--check"]:
        if not README.exists() or README.read_text() != generate():
            print(f"{README} is stale: run scripts/validate-deploy --update", file=sys.stderr)
            return 1
        return 0
    print("usage: chart_readme.py --update | --check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
