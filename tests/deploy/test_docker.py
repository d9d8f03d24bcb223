"""The Dockerfile: multi-stage, distroless nonroot final image, exec-form
entrypoint running `serve`, nothing that needs a shell at run time."""

from __future__ import annotations

import io
import json
import tomllib

from dockerfile_parse import DockerfileParser

import deploylib as d


def dockerfile_errors(text: str) -> list[str]:
    # fileobj keeps the parser in memory (with a path it would write a Dockerfile).
    parser = DockerfileParser(fileobj=io.StringIO(text))
    errors = []
    instrs = parser.structure
    froms = [i for i in instrs if i["instruction"] == "FROM"]
    if len(froms) < 2:
        errors.append("not multi-stage (one FROM)")
    if not froms:
        return errors + ["no FROM"]
    final_start = froms[-1]["startline"]
    final = [i for i in instrs if i["startline"] >= final_start]
    base = froms[-1]["value"].split()[0]
    if "distroless" not in base and base != "scratch":
        errors.append(f"final image {base} is not distroless/scratch")
    users = [i["value"].strip() for i in final if i["instruction"] == "USER"]
    if not users:
        errors.append("final stage sets no USER")
    elif users[-1].split(":")[0] in ("root", "0"):
        errors.append(f"final stage runs as {users[-1]}")
    if any(i["instruction"] == "RUN" for i in final):
        errors.append("RUN in the final stage needs a shell in the image")
    for name in ("ENTRYPOINT", "CMD"):
        found = [i for i in final if i["instruction"] == name]
        if not found:
            errors.append(f"no {name}")
            continue
        try:
            json.loads(found[-1]["value"])
        except ValueError:
            errors.append(f"{name} is shell form (needs /bin/sh at run time)")
    cmd = [i for i in final if i["instruction"] == "CMD"]
    try:
        cmd_value = json.loads(cmd[-1]["value"]) if cmd else None
    except ValueError:
        cmd_value = None
    if cmd_value != ["serve"]:
        errors.append('CMD is not ["serve"]')
    if any(i["instruction"] == "ADD" and "http" in i["value"] for i in instrs):
        errors.append("ADD from a URL")
    return errors


def test_dockerfile():
    assert dockerfile_errors((d.REPO / "Dockerfile").read_text()) == []


def test_dockerfile_exposes_ports():
    text = (d.REPO / "Dockerfile").read_text()
    assert "EXPOSE 9090 9464" in text


def test_dockerignore_keeps_context_small():
    ignored = (d.REPO / ".dockerignore").read_text().split()
    for entry in ("target/", ".git/", ".venv/"):
        assert entry in ignored


def test_dockerfile_check_catches_root_and_shell_form():
    bad = 'FROM rust:1.95 AS build\nRUN cargo build\nFROM debian:12\nCMD blend-scaler serve\n'
    errors = dockerfile_errors(bad)
    assert any("not distroless" in e for e in errors)
    assert any("no USER" in e for e in errors)
    assert any("shell form" in e for e in errors)


def test_image_caps_malloc_arenas():
    # benches/memory.rs runs the scaler with this line's value: its figures are what ships.
    # Three, not one: one arena cost the gRPC path its throughput (BENCHMARKS.md, h2load).
    text = (d.REPO / "Dockerfile").read_text()
    lines = [l for l in text.splitlines() if l.startswith("ENV GLIBC_TUNABLES=")]
    assert len(lines) == 1, lines
    tunables = dict(t.split("=", 1) for t in lines[0].removeprefix("ENV GLIBC_TUNABLES=").split(":"))
    assert tunables["glibc.malloc.arena_max"] == "3"
    assert int(tunables["glibc.malloc.trim_threshold"]) > 0


def test_image_builds_the_lto_profile_the_memory_figures_measure():
    # scripts/bench memory measures this profile's build; BENCHMARKS.md's figures are of it.
    text = (d.REPO / "Dockerfile").read_text()
    builds = [l for l in text.splitlines() if "cargo build" in l]
    assert len(builds) == 1 and "--profile dist" in builds[0], builds
    profile = tomllib.loads((d.REPO / "Cargo.toml").read_text())["profile"]["dist"]
    assert profile["inherits"] == "release"
    assert profile["lto"] == "fat" and profile["codegen-units"] == 1
