"""Word-level edit distance: how many words a candidate prompt changed.

GPO bounds every update by an edit budget in words. Words are whitespace-separated tokens, so
punctuation stays attached ("step." and "step" differ) and layout changes (line breaks,
indentation) cost nothing.

    >>> word_edit_distance("Think step by step.", "Think carefully step by step.")
    1
"""

from __future__ import annotations


def words(text: str) -> list[str]:
    return text.split()


def word_edit_distance(a: str, b: str) -> int:
    """Levenshtein distance over word tokens: insertions, deletions and substitutions, each 1."""
    left, right = words(a), words(b)
    if len(left) < len(right):
        left, right = right, left
    # Two rows over the shorter sequence: O(len(left) * len(right)) time, O(len(right)) memory.
    previous = list(range(len(right) + 1))
    for i, word in enumerate(left, start=1):
        current = [i]
        for j, other in enumerate(right, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other)))
        previous = current
    return previous[-1]
