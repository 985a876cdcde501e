"""deploy/Dockerfile, statically (no Docker engine here): multi-stage, the runtime stage has no
build tools and runs as a numeric non-root user with `corral` as its entrypoint, and the build
copies every package pyproject.toml installs."""
from __future__ import annotations

import fnmatch
import json
import re
import tomllib

from .conftest import DEPLOY, REPO_ROOT

DOCKERFILE = DEPLOY / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def stages() -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def build_args() -> dict[str, str]:
    """Global ARGs (before the first FROM) with their defaults."""
    args = {}
    for keyword, rest in instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value
    return args


def image(from_args: str) -> str:
    ref = from_args.split()[0]
    return re.sub(r"\$\{(\w+)\}", lambda m: build_args()[m.group(1)], ref)


def test_multi_stage_with_a_slim_python_3_11_runtime():
    all_stages = stages()
    assert len(all_stages) >= 2
    assert all_stages[0][0][1].split()[-1] == "builder"
    assert image(all_stages[-1][0][1]) == "python:3.11-slim"


def test_builder_installs_the_package_into_a_virtualenv():
    builder = " ".join(rest for _, rest in stages()[0])
    assert "python -m venv /opt/venv" in builder and "pip install ." in builder


def test_runtime_stage_has_only_the_venv_and_no_build_tools():
    final = stages()[-1]
    text = "\n".join(f"{k} {r}" for k, r in final)
    assert not re.search(r"gcc|g\+\+|build-essential|apt-get install|pip install", text), text
    copies = [r for k, r in final if k == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"], copies


def test_runtime_runs_as_a_numeric_non_root_user_with_corral_as_entrypoint():
    final = dict(stages()[-1])
    user = final["USER"]
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER {user}: use a numeric uid (runAsNonRoot checks it)"
    assert int(user.split(":")[0]) != 0
    assert json.loads(final["ENTRYPOINT"]) == ["corral"]
    assert final["WORKDIR"].startswith("/")
    assert final["EXPOSE"] == "7070"
    run = " ".join(r for k, r in stages()[-1] if k == "RUN")
    uid = user.split(":")[0]
    assert "/var/lib/corral" in run and f"chown {uid}:{uid} /var/lib/corral" in run


def test_no_secrets_in_the_image():
    for keyword, rest in instructions():
        if keyword in ("ENV", "ARG"):
            assert not re.search(r"SECRET|TOKEN|PASSWORD|API_KEY", rest, re.I), rest


def dockerignored(path: str) -> bool:
    """Whether .dockerignore drops `path` (relative to the root; the simple patterns used there)."""
    patterns = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif fnmatch.fnmatch(parts[0], pattern) or fnmatch.fnmatch(path, pattern):
            return True
    return False


def test_build_context_has_every_installed_package_and_no_local_state():
    builder = stages()[0]
    assert ("COPY", ". .") in builder, "the builder copies the (dockerignored) context"
    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dir = setuptools["package-dir"]
    for package in setuptools["packages"]:
        top = package.split(".")[0]
        source = package_dir.get(top, top) + "/" + "/".join(package.split(".")[1:])
        source = source.strip("/")
        assert (REPO_ROOT / source / "__init__.py").is_file() or (REPO_ROOT / source).is_dir(), source
        assert not dockerignored(source), f"package {package} ({source}/) is excluded by .dockerignore"
        assert not dockerignored(source + "/__init__.py")
    for needed in ("pyproject.toml", "README.md"):  # README.md: pyproject's `readme`
        assert not dockerignored(needed)
    for local in (".venv", ".git", ".corral-data", ".pytest_cache", "coordinator/__pycache__", "tests"):
        assert dockerignored(local), f"{local} should not be in the build context"
