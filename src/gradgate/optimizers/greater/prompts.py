"""Texts GReaTer puts in front of the model.

GReaTer sends no instructions to a large model: the only model-facing texts are the phrase that asks the optimized
model for its final answer after its own reasoning, and the instruction used when a prompt has none to optimize.
"""

from __future__ import annotations

# Appended after the model's reasoning; the loss is the cross-entropy of the gold answer that follows it.
# Close to the paper's extractor. No trailing space: the answer is tokenized with its leading space (" True"),
# which is how BPE vocabularies store words.
EXTRACTION_PHRASE = " Therefore, the final answer is"

# Put between the extraction phrase and the gold answer.
ANSWER_SEPARATOR = " "

# Used when the prompt body has no free text to optimize (e.g. a body that is only "{{question}}").
SEED_INSTRUCTION = "Let's think step by step."


def build_answer_tail(gold: str, *, phrase: str = EXTRACTION_PHRASE) -> tuple[str, str]:
    """(phrase, answer text) that follow the reasoning; the loss is taken on the answer text only."""
    return phrase, ANSWER_SEPARATOR + gold.strip()
