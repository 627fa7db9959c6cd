"""Change detection between two git revisions, on real git repositories."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gradgate.errors import UsageError
from gradgate.gate.changes import detect_changes, resolve_ref

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}
CONFIG = "version: 1\nprompts: ['prompts/**/*.md']\n"
SUITE = "metrics: [exact]\nitems:\n" + "".join(f"  - {{id: i{n}, vars: {{q: 'x{n}'}}, expected: 'y'}}\n" for n in range(3))


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV, "HOME": str(repo)},
    )
    return done.stdout.strip()


def write(repo: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def prompt(pid: str, body: str) -> str:
    return f"---\nid: {pid}\nsuite: evals/{pid}.yaml\n---\n{body}\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    write(
        root,
        {
            "gradgate.yaml": CONFIG,
            "prompts/a.md": prompt("a", "Answer {{q}}"),
            "prompts/b.md": prompt("b", "Reply to {{q}}. {{> ../partials/tone.md}}"),
            "prompts/c.md": prompt("c", "Echo {{q}}"),
            "prompts/gone.md": prompt("gone", "Old {{q}}"),
            "partials/tone.md": "Be brief.",
            "evals/a.yaml": SUITE,
            "evals/b.yaml": SUITE,
            "evals/c.yaml": SUITE,
            "evals/gone.yaml": SUITE,
        },
    )
    commit(root, "base")
    return root


def statuses(changes) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {c.prompt_id: c.status for c in changes.changes}


def test_detects_text_include_suite_new_and_removed(repo: Path) -> None:
    write(
        repo,
        {
            "prompts/a.md": prompt("a", "Answer {{q}} carefully"),  # text
            "partials/tone.md": "Be very brief.",  # b's include
            "evals/c.yaml": SUITE.replace("'y'", "'z'"),  # c's suite
            "prompts/new.md": prompt("new", "New {{q}}"),
            "evals/new.yaml": SUITE,
        },
    )
    (repo / "prompts/gone.md").unlink()
    head = commit(repo, "head")
    changes = detect_changes(repo, base_ref="HEAD~1", head_ref=head)
    assert statuses(changes) == {
        "a": "changed",
        "b": "changed",
        "c": "changed",
        "new": "new",
        "gone": "removed",
    }
    reasons = {c.prompt_id: c.reasons for c in changes.changes}
    assert reasons["a"] == ("prompt text",)
    assert reasons["b"] == ("included file",)
    assert reasons["c"] == ("suite",)
    assert changes.base.label == git(repo, "rev-parse", "HEAD~1")[:12]


def test_unchanged_prompts_and_config_sections(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    write(repo, {"README.md": "docs only\n"})
    commit(repo, "docs")
    assert set(statuses(detect_changes(repo, base_ref=base, head_ref="HEAD")).values()) == {"unchanged"}
    # A config section a prompt uses (the judge) changes every prompt's effective content.
    write(repo, {"gradgate.yaml": CONFIG + "judge: {criteria: 'Be exact.'}\n"})
    changes = detect_changes(repo, base_ref=base, head_ref=None)  # the working tree as head
    assert set(statuses(changes).values()) == {"changed"}
    assert all(c.reasons == ("config: judge",) for c in changes.changes)
    assert changes.head.label == "working tree"
    # Budget settings are not used by a prompt's score: no change.
    write(repo, {"gradgate.yaml": CONFIG + "budget: {max_calls: 5}\n"})
    assert set(statuses(detect_changes(repo, base_ref=base)).values()) == {"unchanged"}


def test_only_selected_prompts(repo: Path) -> None:
    write(repo, {"prompts/a.md": prompt("a", "A2 {{q}}"), "prompts/c.md": prompt("c", "C2 {{q}}")})
    changes = detect_changes(repo, base_ref="HEAD", prompt_ids=("a",))
    assert statuses(changes) == {"a": "changed"}
    with pytest.raises(UsageError, match="unknown prompt id"):
        detect_changes(repo, base_ref="HEAD", prompt_ids=("nope",))


def test_bad_refs_and_non_repositories_are_usage_errors(repo: Path, tmp_path: Path) -> None:
    for ref in ("no-such-branch", "--upload-pack=evil", "", "HEAD~99"):
        with pytest.raises(UsageError) as info:
            resolve_ref(repo, ref, what="base")
        assert info.value.exit_code == 2
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(UsageError, match="not inside a git repository"):
        detect_changes(plain, base_ref="HEAD")


def test_base_without_gradgate_and_broken_base_prompt(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    write(root, {"README.md": "x\n", "prompts/bad.md": "---\nid: [oops\n---\nbody\n"})
    commit(root, "before gradgate")
    write(
        root,
        {
            "gradgate.yaml": CONFIG,
            "prompts/a.md": prompt("a", "A {{q}}"),
            "evals/a.yaml": SUITE,
            "prompts/bad.md": prompt("bad", "fixed {{q}}"),
            "evals/bad.yaml": SUITE,
        },
    )
    commit(root, "add gradgate")
    changes = detect_changes(root, base_ref="HEAD~1", head_ref="HEAD")
    assert statuses(changes) == {"a": "new", "bad": "new"}
    assert "prompts/bad.md" in changes.base.broken


def test_repository_in_a_subdirectory(tmp_path: Path) -> None:
    top = tmp_path / "mono"
    sub = top / "services" / "bot"
    sub.mkdir(parents=True)
    git(top, "init", "-q", "-b", "main")
    write(sub, {"gradgate.yaml": CONFIG, "prompts/a.md": prompt("a", "A {{q}}"), "evals/a.yaml": SUITE})
    commit(top, "base")
    write(sub, {"prompts/a.md": prompt("a", "A better {{q}}")})
    changes = detect_changes(sub, base_ref="HEAD")
    assert statuses(changes) == {"a": "changed"}
    assert changes.git_prefix == "services/bot/"


def test_safe_extract_without_the_data_filter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian 12's Python 3.11.2 (the action image) has no tarfile data filter: the fallback checks members."""
    import io
    import tarfile

    from gradgate.gate import changes

    monkeypatch.delattr(tarfile, "data_filter", raising=False)

    def archive(*members: tarfile.TarInfo) -> tarfile.TarFile:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as out:
            for member in members:
                out.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
        buffer.seek(0)
        return tarfile.open(fileobj=buffer, mode="r:")

    good = tarfile.TarInfo("prompts/a.md")
    good.size = 1
    changes._safe_extract(archive(good), tmp_path / "ok")
    assert (tmp_path / "ok" / "prompts" / "a.md").read_text() == "x"
    evil = tarfile.TarInfo("link")
    evil.type, evil.linkname = tarfile.SYMTYPE, "../../etc/passwd"
    with pytest.raises(tarfile.TarError, match="outside"):
        changes._safe_extract(archive(evil), tmp_path / "bad")
