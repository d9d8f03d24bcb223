"""Regenerate charts/blend-scaler/rendered/ (scripts/validate-deploy --update).

One file per values set: rendered/<set>.yaml (manifests) and
rendered/<set>.NOTES.txt, where <set> is `default` or a file name under ci/.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import deploylib as d  # noqa: E402


def expected_files() -> dict[Path, str]:
    files: dict[Path, str] = {}
    for name, values in d.values_sets().items():
        rendered = d.helm_render(values)
        files[d.RENDERED / f"{name}.yaml"] = d.rendered_text(rendered)
        files[d.RENDERED / f"{name}.NOTES.txt"] = d.notes_of(rendered).rstrip("\n") + "\n"
    return files


def main(argv: list[str]) -> int:
    if argv != ["--update"]:
        print("usage: render.py --update", file=sys.stderr)
        return 2
    files = expected_files()
    d.RENDERED.mkdir(parents=True, exist_ok=True)
    for stale in d.RENDERED.iterdir():
        if stale not in files:
            stale.unlink()
            print(f"removed {stale.relative_to(d.REPO)}")
    for path, text in files.items():
        old = path.read_text() if path.exists() else None
        if old != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(d.REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
