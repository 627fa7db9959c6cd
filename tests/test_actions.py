"""GitHub Actions runtime helpers: outputs, job summary, annotations, masking."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gradgate.github import actions
from gradgate.github.actions import (
    MAX_SUMMARY_BYTES,
    annotate,
    in_github_actions,
    mask_secret,
    set_output,
    write_step_summary,
)


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        "GITHUB_ACTIONS": "true",
        "GITHUB_OUTPUT": str(tmp_path / "output"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
    }


def _parse_outputs(text: str) -> dict[str, str]:
    """Parse $GITHUB_OUTPUT the way the runner does."""
    values: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            end = lines.index(delimiter, i + 1)
            values[name] = "\n".join(lines[i + 1 : end])
            i = end + 1
        elif line:
            name, value = line.split("=", 1)
            values[name] = value
            i += 1
        else:
            i += 1
    return values


def test_set_output_single_and_multiline(tmp_path: Path) -> None:
    env = _env(tmp_path)
    set_output("verdict", "pass", env=env)
    set_output("report", "line 1\nghadelimiter_fake\nEOF\nline 4", env=env)
    set_output("empty", "", env=env)
    text = (tmp_path / "output").read_text()
    assert _parse_outputs(text) == {
        "verdict": "pass",
        "report": "line 1\nghadelimiter_fake\nEOF\nline 4",
        "empty": "",
    }
    delimiters = re.findall(r"report<<(\S+)", text)
    assert len(delimiters) == 1 and len(delimiters[0]) > 30


def test_set_output_rejects_bad_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        set_output("a=b", "x", env=_env(tmp_path))


def test_everything_is_a_noop_outside_actions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {**_env(tmp_path), "GITHUB_ACTIONS": "false"}
    assert not in_github_actions(env)
    set_output("x", "1", env=env)
    write_step_summary("# hi", env=env)
    annotate("error", "boom", file="a.py", line=3, env=env)
    mask_secret("s3cret", env=env)
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().out == ""


def test_summary_appends(tmp_path: Path) -> None:
    env = _env(tmp_path)
    write_step_summary("# one", env=env)
    write_step_summary("two\n", env=env)
    assert (tmp_path / "summary.md").read_text() == "# one\ntwo\n"


def test_summary_stays_under_one_mib_and_utf8_safe(tmp_path: Path) -> None:
    env = _env(tmp_path)
    summary = tmp_path / "summary.md"
    summary.write_text("x" * 1000)
    write_step_summary("€" * 400_000, env=env)  # 1.2 MB of 3-byte characters
    data = summary.read_bytes()
    assert len(data) <= MAX_SUMMARY_BYTES
    text = data.decode("utf-8")  # raises if a character was cut in half
    assert text.rstrip().endswith("1 MiB limit.")
    write_step_summary("more", env=env)  # no room left: dropped, still valid
    assert len(summary.read_bytes()) <= MAX_SUMMARY_BYTES
    summary.read_bytes().decode("utf-8")


def test_annotations_escape_properties_and_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = _env(tmp_path)
    annotate("error", "100% worse\r\nsee: report", file="prompts/a,b:c.txt", line=12, title="Regression: 5%", env=env)
    annotate("warning", "plain", env=env)
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "::error file=prompts/a%2Cb%3Ac.txt,line=12,title=Regression%3A 5%25::100%25 worse%0D%0Asee: report",
        "::warning::plain",
    ]


def test_mask_secret_masks_each_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mask_secret("abc\ndef%", env=_env(tmp_path))
    mask_secret("", env=_env(tmp_path))
    mask_secret("line1\n \nline2\n", env=_env(tmp_path))
    assert capsys.readouterr().out.splitlines() == [
        "::add-mask::abc",
        "::add-mask::def%25",
        "::add-mask::line1",
        "::add-mask::line2",
    ]


def test_reads_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in _env(tmp_path).items():
        monkeypatch.setenv(key, value)
    assert actions.in_github_actions()
    set_output("k", "v")
    assert (tmp_path / "output").read_text() == "k=v\n"
