"""JUnit XML (`--junit FILE`) for the test-report views of CI systems.

    write_junit(Path("junit.xml"), eval_junit(results))     # a suite per prompt, a testcase per item
    write_junit(Path("junit.xml"), check_junit(summary))    # a testcase per prompt

eval: an item that did not pass is a `<failure>` (its metric reasons, the judge's explanation and the
output in the body); an item the budget left unscored is an `<error>`. check: a regressed prompt is a
`<failure>`, a prompt without a decision because the model or the budget gave out is an `<error>`, a prompt
not re-run (effective content unchanged) or removed is `<skipped>`; improved, unchanged, inconclusive and
new prompts pass, with their verdict in `<system-out>`. Text is redacted like every report.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

from gradgate.core.files import atomic_write_text
from gradgate.core.secrets import redact
from gradgate.gate.report import CheckSummary, PromptVerdict
from gradgate.scoring.results import EvalResults, ItemOut, PromptOut

MAX_TEXT_CHARS = 4000


def _text(value: object) -> str:
    """Redacted and stripped of characters XML 1.0 cannot carry."""
    text = redact("" if value is None else str(value))[:MAX_TEXT_CHARS]
    return "".join(ch for ch in text if ch in "\t\n\r" or ord(ch) >= 0x20)


def _counts(element: ET.Element, cases: Iterable[ET.Element], seconds: float = 0.0) -> None:
    cases = list(cases)
    element.set("tests", str(len(cases)))
    for kind, tag in (("failures", "failure"), ("errors", "error"), ("skipped", "skipped")):
        element.set(kind, str(sum(1 for c in cases if c.find(tag) is not None)))
    element.set("time", f"{seconds:.3f}")


def _case(parent: ET.Element, classname: str, name: str) -> ET.Element:
    return ET.SubElement(parent, "testcase", {"classname": _text(classname), "name": _text(name), "time": "0"})


def _add(case: ET.Element, tag: str, message: str, body: str = "") -> None:
    child = ET.SubElement(case, tag, {"message": _text(message)})
    if body:
        child.text = _text(body)


def _item_case(suite: ET.Element, prompt: PromptOut, item: ItemOut) -> ET.Element:
    case = _case(suite, f"gradgate.eval.{prompt.id}", item.id)
    if item.error is not None:
        _add(case, "error", item.error)
    elif not item.passed:
        reasons = "; ".join(f"{m.name} {m.score:.2f}: {m.reason}" for m in item.metrics)
        body = [f"score {item.score:.3f}", f"reasons: {reasons}"]
        if item.judge_explanation:
            body.append(f"judge: {item.judge_explanation}")
        if item.expected is not None:
            body.append(f"expected: {item.expected}")
        if item.reasoning is not None:
            body.append(f"reasoning:\n{item.reasoning}")
        body.append(f"output:\n{item.output}")
        _add(case, "failure", f"score {item.score:.3f}: {reasons}", "\n".join(body))
    return case


def eval_junit(results: EvalResults) -> str:
    root = ET.Element("testsuites", {"name": "gradgate eval"})
    seconds = float(results.budget.get("seconds", 0.0))
    for prompt in results.prompts:
        suite = ET.SubElement(root, "testsuite", {"name": _text(prompt.id), "timestamp": results.created_at})
        properties = ET.SubElement(suite, "properties")
        for name, value in (
            ("path", prompt.path),
            ("suite", prompt.suite),
            ("mean_score", f"{prompt.mean_score:.6f}"),
            ("pass_rate", f"{prompt.pass_rate:.6f}"),
        ):
            ET.SubElement(properties, "property", {"name": name, "value": _text(value)})
        _counts(suite, [_item_case(suite, prompt, item) for item in prompt.items])
    _counts(root, root.iter("testcase"), seconds)
    return _serialize(root)


def _verdict_case(parent: ET.Element, p: PromptVerdict) -> None:
    case = _case(parent, "gradgate.check", p.prompt_id)
    case.set("file", _text(p.path))
    scores = f"base {p.base_mean if p.base_mean is not None else '–'} → head {p.head_mean if p.head_mean is not None else '–'}"
    why = "; ".join(bit for bit in (p.decision.reason if p.decision else "", p.note or "") if bit)
    if p.verdict == "regressed":
        delta = f" (Δ {p.decision.mean_diff:+.3f}, interval {p.decision.low:+.3f} … {p.decision.high:+.3f})" if p.decision else ""
        _add(case, "failure", f"prompt {p.prompt_id} regressed: {scores}{delta}", why)
    elif p.verdict == "error" or p.infra_failure:
        _add(case, "error", f"prompt {p.prompt_id}: no decision: {p.note or p.verdict}", why)
    out = ET.SubElement(case, "system-out")
    out.text = _text(f"{p.verdict}: {scores}, {p.items_scored}/{p.items_total} items, {p.calls} calls. {why}")


def check_junit(summary: CheckSummary) -> str:
    root = ET.Element("testsuites", {"name": "gradgate check"})
    suite = ET.SubElement(root, "testsuite", {"name": f"gradgate check {summary.base_label}..{summary.head_label}"})
    for p in summary.prompts:
        _verdict_case(suite, p)
    for prompt_id in summary.unchanged:
        _add(_case(suite, "gradgate.check", prompt_id), "skipped", "effective content unchanged: not re-run")
    for prompt_id in summary.removed:
        _add(_case(suite, "gradgate.check", prompt_id), "skipped", "removed in head")
    if summary.error:
        _add(_case(suite, "gradgate.check", "gradgate check"), "error", summary.error)
    seconds = float(summary.budget.get("seconds", 0.0)) if summary.budget else 0.0
    _counts(suite, suite.iter("testcase"), seconds)
    _counts(root, root.iter("testcase"), seconds)
    return _serialize(root)


def _serialize(root: ET.Element) -> str:
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(path: Path, document: str) -> Path:
    atomic_write_text(path, document)
    return path
