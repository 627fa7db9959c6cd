"""GReaTer's rollout decoding (decoding.py): rows of uneven reasoning leave the batch as they finish, prompts of
different lengths are prefilled in separate passes and merged into one cache, and every row still decodes and
scores exactly as it would alone."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gradgate.optimizers.greater.decoding import RowPlan, by_length, decode_rows  # noqa: E402
from gradgate.optimizers.greater.engine import GreaterEngine  # noqa: E402
from gradgate.optimizers.greater.settings import GreaterConfig  # noqa: E402
from tests.test_greater import full_forward_loss, random_items, tiny_gemma, tiny_llama  # noqa: E402

INSTRUCTION = [20, 21, 22]
NEW_TOKENS = 6


def plain_generate(model: Any, prefix: list[int], max_new_tokens: int, eos: int) -> list[int]:
    ids = torch.tensor([prefix])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=0
    )
    new = out[0, ids.shape[1] :].tolist()
    return new[: new.index(eos)] if eos in new else new


def engine(model: Any, eos: int, **overrides: Any) -> GreaterEngine:
    values: dict[str, Any] = {"dtype": "float64", "device": "cpu", "max_new_tokens": NEW_TOKENS, "top_k": 5}
    cfg = GreaterConfig(**{**values, **overrides})
    return GreaterEngine(model, cfg, pad_id=0, eos_ids=[eos], phrase_ids=[11, 12, 13])


def uneven_eos(model: Any, items: list[Any]) -> tuple[int, int]:
    """(eos, n): a token that ends row 1's reasoning after its first n >= 1 tokens (the first new one it produces)."""
    first = plain_generate(model, list(items[1].before) + INSTRUCTION + list(items[1].after), NEW_TOKENS, eos=1)
    n = next(i for i in range(1, len(first)) if first[i] not in first[:i])
    return first[n], n


@pytest.mark.parametrize("make_model", [tiny_llama, tiny_gemma], ids=["llama", "gemma3-sliding"])
def test_rows_that_finish_leave_the_batch_and_every_row_decodes_as_alone(make_model: Any) -> None:
    model = make_model()
    items, _ = random_items(4, seed=5)  # prompts of 4 different lengths
    eos, n = uneven_eos(model, items)
    eng = engine(model, eos, batch_size=4, pass_tokens=1)  # a prefill pass per row, merged when the cache allows
    widths: list[int] = []
    step = eng._step

    def recording_step(ids: Any, mask: Any, pos: Any, cache: Any) -> Any:
        widths.append(ids.shape[0])
        return step(ids, mask, pos, cache)

    eng._step = recording_step  # type: ignore[method-assign]
    rollout = eng.rollout([INSTRUCTION], items)[0]

    lengths = [len(r) for r in rollout.reasoning]
    assert lengths[1] == n and max(lengths) > n  # uneven, as set up
    assert widths[0] == 4 and min(widths) < 4  # the batch shrank as rows finished
    assert eng.mergeable is (make_model is tiny_llama)  # Gemma's sliding-window cache is prefilled in one pass
    for it, got in zip(items, rollout.reasoning, strict=True):
        assert list(got) == plain_generate(model, list(it.before) + INSTRUCTION + list(it.after), NEW_TOKENS, eos)
    plain = full_forward_loss(model, eng, INSTRUCTION, items, rollout.reasoning)
    cached = float((rollout.answer_loss + eng.config.fluency_weight * rollout.fluency).sum())
    assert cached == pytest.approx(plain, rel=1e-7)


def test_generated_answers_of_uneven_rows_continue_each_rows_own_reasoning() -> None:
    model = tiny_llama()
    items, _ = random_items(4, seed=6)
    eos, _ = uneven_eos(model, items)
    eng = engine(model, eos, batch_size=4, pass_tokens=30, answer_tokens=3)
    eng.decode = lambda ids: ",".join(map(str, ids))
    rollout = eng.rollout([INSTRUCTION], items, generate_answers=True)[0]
    for it, why, answer in zip(items, rollout.reasoning, rollout.answers, strict=True):
        prefix = list(it.before) + INSTRUCTION + list(it.after) + list(why) + list(eng.phrase)
        assert answer == ",".join(map(str, plain_generate(model, prefix, 3, eos)))


def test_the_gradient_is_the_same_and_one_call_in_length_sorted_passes_of_any_size() -> None:
    model = tiny_llama()
    items, reasoning = random_items(5, seed=7)
    cands = [21, 40, 41, 42]
    engines = [engine(model, 1, grad_batch_size=n) for n in (1, 2, 5)]
    grads = [e.gradient(INSTRUCTION, 1, False, cands, items, reasoning) for e in engines]
    assert torch.allclose(grads[0], grads[1], rtol=1e-9) and torch.allclose(grads[0], grads[2], rtol=1e-9)
    # One call each, and the same tokens: the pass size is a memory setting, not a cost against the budget.
    assert [(e.meter.calls, e.meter.prompt_tokens) for e in engines] == [(1, engines[0].meter.prompt_tokens)] * 3


def test_by_length_sorts_then_groups_up_to_the_row_and_token_caps() -> None:
    assert by_length([5, 1, 4, 2, 3], 2, 100) == [[1, 3], [4, 2], [0]]
    assert by_length([5, 1, 4, 2, 3], 9, 9) == [[1, 3, 4], [2], [0]]  # 3 rows x 3 tokens; 2 x 5 would be 10
    assert by_length([50, 7], 4, 10) == [[1], [0]]  # a row longer than the cap still gets its own pass
    assert by_length([], 3, 10) == []


class FakeCache:
    def __init__(self) -> None:
        self.kept: list[list[int]] = []

    def reorder_cache(self, index: Any) -> None:
        self.kept.append(index.tolist())


def test_finished_rows_leave_together_once_a_quarter_of_the_batch_is_done() -> None:
    plans = [RowPlan(max_reasoning=n, forced=(), collect_from=0) for n in range(1, 9)]  # row i reasons i + 1 tokens
    widths: list[int] = []

    def step(ids: Any, mask: Any, pos: Any, cache: Any) -> Any:
        widths.append(ids.shape[0])
        assert mask.shape[0] == ids.shape[0] == pos.shape[0]
        return torch.zeros(ids.shape[0], 4), cache

    cache = FakeCache()
    mask, pos = torch.ones(8, 3, dtype=torch.long), torch.full((8,), 3)
    outs = decode_rows(step, lambda h: torch.zeros(h.shape[0], 5), torch.tensor([4]), torch.zeros(8, 5), mask, pos, cache, plans)
    assert [len(o.reasoning) for o in outs] == list(range(1, 9))
    # Two of eight finished -> six rows; two of six -> four; one of four -> three, -> two, -> one.
    assert widths == [8, 8, 6, 6, 4, 3, 2, 1]
    assert cache.kept == [[2, 3, 4, 5, 6, 7], [2, 3, 4, 5], [1, 2, 3], [1, 2], [1]]  # batch positions kept
