"""report.html and JUnit XML: what people look at after a run.

The three HTML reports (eval, check, optimize) come from real runs on the scripted model and are opened in
headless Chromium (Debian's `chromium`, installed by scripts/setup.sh), driven over the DevTools protocol
through a pipe: every page must load without a console error, an uncaught exception, a security or network
error, or any request beyond the file itself, and must show its table and chart.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gradgate.app.eval_job import run_eval
from gradgate.app.html_report import eval_html
from gradgate.app.junit import check_junit, eval_junit
from gradgate.scoring.results import EvalResults, ItemOut, MetricOut, PromptOut
from tests.conftest import EXAMPLE_REPO
from tests.test_gate import check, gh_env, make_repo
from tests.test_shards import session_for

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--remote-debugging-pipe",
)


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (fd 3: commands in, fd 4: replies out)."""

    def __init__(self, binary: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="gradgate-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire() -> None:  # in the child, before exec: the pipe ends become fds 3 and 4
            commands, replies = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(commands, 3)
            os.dup2(replies, 4)

        self.process = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            preexec_fn=wire,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        reply = self.wait(lambda m, wanted=self._next_id: m.get("id") == wanted)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return dict(reply.get("result", {}))

    def wait(self, wanted: Any, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if wanted(message):
                    return dict(message)
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        raise TimeoutError("chromium did not answer")

    def load(self, path: Path) -> tuple[str, list[str], list[str]]:
        """Open a file in a new tab: its session id, the errors it logged and the URLs it requested."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.send(f"{domain}.enable", session=session)
        start = len(self.events)
        self.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        self.wait(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session)
        self.evaluate(session, "new Promise(r => setTimeout(r, 200))")  # late errors get their chance
        errors, requests = [], []
        for event in self.events[start:]:
            if event.get("sessionId") != session:
                continue
            params = event.get("params", {})
            if event["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif event["method"] == "Runtime.exceptionThrown":
                errors.append("exception: " + params.get("exceptionDetails", {}).get("text", ""))
            elif event["method"] == "Log.entryAdded" and params["entry"].get("level") == "error":
                errors.append(f"{params['entry'].get('source')}: {params['entry'].get('text')}")
            elif event["method"] == "Network.requestWillBeSent":
                requests.append(params["request"]["url"])
        return session, errors, requests

    def evaluate(self, session: str, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, session)
        return result.get("result", {}).get("value")

    def close(self) -> None:
        try:
            os.write(self._to_browser, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)
            shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Chromium]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/setup.sh installs Debian's `chromium` package)")
    browser = Chromium(CHROMIUM)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """report.html of a real eval, check and optimize run (scripted model), as the jobs wrote them."""
    from gradgate.app.optimize_job import run_optimize_job
    from tests.test_gradsum import GOOD, Script, open_session, sequence_editor
    from tests.test_gradsum import make_repo as make_qa_repo

    root = tmp_path_factory.mktemp("reports")
    examples = shutil.copytree(EXAMPLE_REPO, root / "examples", ignore=shutil.ignore_patterns("workflows"))
    asyncio.run(run_eval(session_for(examples), out_dir=root / "eval"))
    check(make_repo(root / "gate"), root / "check", gh_env(root))
    session = open_session(make_qa_repo(root / "qa"), Script(sequence_editor(GOOD)), optimize={"gradsum": {"iterations": 1}})
    asyncio.run(
        run_optimize_job(session, methods=["gradsum"], out_dir=root / "optimize", seed=0, write=False, open_pr=False, env={})
    )
    return {kind: root / kind / "report.html" for kind in ("eval", "check", "optimize")}


@pytest.mark.parametrize(
    ("kind", "title", "rows", "marker"),
    [
        ("eval", "gradgate eval", 3, "#p-math table.items tbody tr"),
        ("check", "gradgate check: regressed", 3, ".badge.regressed"),
        ("optimize", "gradgate optimize", 1, "h2 .badge.improved"),
    ],
)
def test_reports_load_in_chromium_without_errors_and_show_their_tables(
    chromium: Chromium, reports: dict[str, Path], kind: str, title: str, rows: int, marker: str
) -> None:
    session, errors, requests = chromium.load(reports[kind])
    assert errors == []
    assert requests == [reports[kind].resolve().as_uri()]  # self-contained: nothing else is fetched
    assert chromium.evaluate(session, "document.title") == title
    assert chromium.evaluate(session, "document.querySelectorAll('table.summary tbody tr').length") == rows
    assert chromium.evaluate(session, f"document.querySelectorAll({marker!r}).length") >= 1
    # The chart is drawn: bars with a real width, as laid out by the browser.
    widths = chromium.evaluate(
        session, "[...document.querySelectorAll('svg.chart rect.s0, svg.chart rect.s1')].map(r => r.getBBox().width)"
    )
    assert widths and max(widths) > 100
    assert chromium.evaluate(session, "document.scripts.length") == 0


def test_the_browser_check_catches_errors(chromium: Chromium, tmp_path: Path) -> None:
    """The harness is not blind: a page with a console error, an exception and a blocked image fails it."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><title>bad</title><img src='data:,x'>"
        "<script>console.error('boom'); undefined_function();</script>"
        "<div style=\"background:url('http://127.0.0.1:9/x.png')\">x</div>"
    )
    _, errors, requests = chromium.load(bad)
    assert any("boom" in e for e in errors) and any(e.startswith("exception") for e in errors)
    assert len(requests) > 1


def test_html_escapes_and_redacts_model_output(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test" + "B" * 30
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    item = ItemOut(
        id="x<y>",
        vars={"q": "<b>bold</b>"},
        expected="&",
        output=f"</pre><script>alert(1)</script> {secret}",
        score=0.0,
        passed=False,
        metrics=[MetricOut(name="judge", score=0.0, reason="judge: FAIL")],
        judge_explanation="<img src=x onerror=alert(1)>",
    )
    prompt = PromptOut(
        id="p", path="prompts/p.md", suite="evals/p.yaml", prompt_sha256="0", n_items=1, n_scored=1, mean_score=0.0,
        ci_low=0.0, ci_high=0.0, pass_rate=0.0, complete=True, items=[item],
    )  # fmt: skip
    html = eval_html(EvalResults(created_at="now", models={"task": "m"}, budget={}, prompts=[prompt]))
    assert "<script" not in html and "<img" not in html and secret not in html
    assert "&lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in html and "***" in html
    assert "https://" not in html and "http://" not in html


def test_junit_for_eval_and_check(reports: dict[str, Path], tmp_path: Path) -> None:
    results = EvalResults.model_validate_json((reports["eval"].parent / "results.json").read_text())
    root = ET.fromstring(eval_junit(results))
    assert [s.get("name") for s in root.iter("testsuite")] == [p.id for p in results.prompts]
    cases = list(root.iter("testcase"))
    assert len(cases) == sum(p.n_items for p in results.prompts) == int(root.get("tests", "0"))
    failing = sum(1 for p in results.prompts for i in p.items if not i.passed and i.error is None)
    assert int(root.get("failures", "0")) == failing == sum(1 for c in cases if c.find("failure") is not None)

    summary = check(make_repo(tmp_path / "gate"), tmp_path / "out", gh_env(tmp_path), junit=tmp_path / "junit.xml").summary
    root = ET.parse(tmp_path / "junit.xml").getroot()
    assert ET.tostring(root) == ET.tostring(ET.fromstring(check_junit(summary)))
    outcome = {c.get("name"): [child.tag for child in c] for c in root.iter("testcase")}
    assert outcome == {
        "worse": ["failure", "system-out"],
        "better": ["system-out"],
        "reworded": ["system-out"],
        "same": ["skipped"],
    }
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("4", "1", "1")


def test_every_shipped_workflow_uploads_report_html() -> None:
    for path in sorted((REPO_ROOT / "examples" / "workflows").glob("*.yml")):
        workflow = yaml.safe_load(path.read_text())
        steps = [s for job in workflow["jobs"].values() for s in job.get("steps", [])]
        uploads = [s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact@")]
        assert any("report.html" in str(s.get("with", {}).get("path", "")) for s in uploads), path.name
