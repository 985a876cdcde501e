"""The gRPC contract (proto/) passes `buf lint` (STANDARD), and has no breaking change (FILE rules)
against the last release tag (v*), when the clone has one.

Configuration: proto/buf.yaml. The buf binary is the PyPI package `buf-bin` (the dev extra). All of
it works offline: `buf breaking` reads the tag from the local git repository.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO_ROOT, venv_tool

pytestmark = pytest.mark.timeout(60)

PROTO = REPO_ROOT / "proto"


@pytest.fixture(scope="module")
def buf_bin() -> str:
    path = venv_tool("buf")
    if path is None:
        pytest.skip("buf not found next to the interpreter or on PATH (pip install -e '.[dev]': buf-bin)")
    return path


def buf(buf_bin: str, *args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([buf_bin, *args, "--error-format", "text"], cwd=cwd, capture_output=True, text=True,
                          timeout=45)


def git(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)


def latest_release_tag(repo: Path) -> str | None:
    """The highest v* tag (version order) whose commit has proto/, or None."""
    listed = git("tag", "--list", "v*", "--sort=-v:refname", cwd=repo)
    if listed.returncode != 0:
        return None
    for tag in listed.stdout.split():
        if git("cat-file", "-e", f"{tag}^{{commit}}:proto", cwd=repo).returncode == 0:
            return tag
    return None


def breaking_against_tag(buf_bin: str, repo: Path, tag: str) -> subprocess.CompletedProcess:
    # The working tree's proto/ against proto/ at the tag, read from the local .git (no network).
    return buf(buf_bin, "breaking", "proto", "--against", f".git#tag={tag},subdir=proto", cwd=repo)


def test_buf_yaml_is_v2_with_standard_lint_and_file_breaking_rules():
    text = (PROTO / "buf.yaml").read_text()
    assert "version: v2" in text
    assert "STANDARD" in text and "FILE" in text


def test_buf_lint_passes(buf_bin):
    proc = buf(buf_bin, "lint", "proto")
    assert proc.returncode == 0, f"buf lint proto (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"


def test_no_breaking_change_since_the_last_release_tag(buf_bin):
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout (or no git): no release tag to compare proto/ against")
    tag = latest_release_tag(REPO_ROOT)
    if tag is None:
        pytest.skip("no v* tag with proto/ in this clone (none released yet, or a clone without tags: "
                    "`git fetch --tags`): nothing to check breaking changes against")
    proc = breaking_against_tag(buf_bin, REPO_ROOT, tag)
    assert proc.returncode == 0, (f"proto/ has breaking changes against {tag} "
                                  f"(buf breaking, FILE rules):\n{proc.stdout}{proc.stderr}")


def test_the_breaking_check_catches_a_breaking_change(buf_bin, tmp_path):
    """The same check, on a scratch repository with its own tag: it passes unchanged, fails on a break.

    So the command above is known to work even while this clone has no tag to compare against.
    """
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    shutil.copytree(PROTO, repo / "proto", ignore=shutil.ignore_patterns("*.py", "*.pyi", "__pycache__"))
    ident = ["-c", "user.name=contract-test", "-c", "user.email=contract-test@example.invalid",
             "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"]
    for args in (["init", "-q"], ["add", "proto"], [*ident, "commit", "-q", "-m", "release"],
                 [*ident, "tag", "v0.0.1"], [*ident, "tag", "v0.0.2"]):
        proc = git(*args, cwd=repo)
        assert proc.returncode == 0, f"git {args}: {proc.stderr}"
    assert latest_release_tag(repo) == "v0.0.2"

    proc = breaking_against_tag(buf_bin, repo, "v0.0.2")
    assert proc.returncode == 0, proc.stdout + proc.stderr

    task_proto = repo / "proto" / "corral" / "v1" / "task.proto"
    text = task_proto.read_text()
    assert "string task_id = 1;" in text
    task_proto.write_text(text.replace("string task_id = 1;", "int64 task_id = 1;", 1))
    proc = breaking_against_tag(buf_bin, repo, "v0.0.2")
    assert proc.returncode != 0, "buf breaking did not notice a field type change"
    assert "task_id" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
