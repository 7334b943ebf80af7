"""Read user feedback as an evaluation score: a value and a label such as ``thumbup``.

Feedback bodies are whatever the app sends (prompt flow stores them as they are), so
``FeedbackScoring`` accepts the common shapes and says "unscored" for the rest:

* a word: ``"thumbup"`` / ``"thumbdown"`` and their usual spellings (``labels``);
* a boolean: true is ``thumbup`` (1.0), false ``thumbdown`` (0.0);
* a number: its own value, labelled ``thumbup`` at or above ``positive_threshold``, else ``thumbdown``
  (set the threshold to 3 for one-to-five stars);
* an object: the first of ``rating_fields`` that scores, with ``comment`` / ``explanation`` /
  ``reason`` as the explanation.

Two labels keep the ``feedback`` metric's ``score_label`` dimension small and make a
thumbs-down ratio one query, whatever scale the app uses.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flowtel import semconv as sc

POSITIVE, NEGATIVE, UNSCORED = "thumbup", "thumbdown", "unscored"

_UP = ("thumbup", "thumbsup", "thumb_up", "thumbs_up", "\N{THUMBS UP SIGN}", "up", "like", "positive", "good",
       "yes", "helpful")
_DOWN = ("thumbdown", "thumbsdown", "thumb_down", "thumbs_down", "\N{THUMBS DOWN SIGN}", "down", "dislike",
         "negative", "bad", "no", "unhelpful")
DEFAULT_LABELS: Mapping[str, tuple[float, str]] = {
    **{word: (1.0, POSITIVE) for word in _UP}, **{word: (0.0, NEGATIVE) for word in _DOWN}}
DEFAULT_RATING_FIELDS = ("rating", "score", "thumb", "thumbs", "vote", "feedback", "label", "value")
_EXPLANATION_FIELDS = ("comment", "explanation", "reason")


@dataclass(frozen=True, slots=True)
class Score:
    value: float
    label: str
    explanation: str | None = None


def normalize_word(word: str) -> str:
    return word.strip().lower().replace("-", "_").replace(" ", "_")


@dataclass(frozen=True, slots=True)
class FeedbackScoring:
    #: ``gen_ai.evaluation.name`` of the evaluation event.
    evaluation_name: str = "user_feedback"
    #: Words (compared lower-cased, ``-`` and spaces as ``_``) to ``(score value, label)``.
    labels: Mapping[str, tuple[float, str]] = field(default_factory=lambda: dict(DEFAULT_LABELS))
    #: Keys of an object body (or of flattened feedback attributes) that hold the rating, first match wins.
    rating_fields: tuple[str, ...] = DEFAULT_RATING_FIELDS
    #: Numbers at or above this are ``thumbup``.
    positive_threshold: float = 0.5

    def score(self, value: Any, _nested: bool = False) -> Score | None:
        if isinstance(value, bool):
            return Score(1.0, POSITIVE) if value else Score(0.0, NEGATIVE)
        if isinstance(value, (int, float)):
            number = float(value)
            if not math.isfinite(number):
                return None
            return Score(number, POSITIVE if number >= self.positive_threshold else NEGATIVE)
        if isinstance(value, str):
            known = self.labels.get(normalize_word(value))
            if known is not None:
                return Score(known[0], known[1])
            try:  # a numeric string, as flattened form fields often are
                return self.score(float(value)) if value.strip() else None
            except ValueError:
                return None
        if isinstance(value, Mapping) and not _nested:  # one level: a rating inside a rating is not a shape
            for key in self.rating_fields:
                if key in value:
                    found = self.score(value[key], True)
                    if found is not None:
                        return Score(found.value, found.label, _explanation(value))
        return None

    def read(self, attributes: Mapping[str, Any]) -> Score | None:
        """The score of a ``promptflow-feedback`` span from its attributes: the raw ``feedback`` body
        (prompt flow's default), else the flattened keys (``?flatten=true``)."""
        raw = attributes.get(sc.FEEDBACK_ATTRIBUTE)
        if isinstance(raw, str):
            try:
                parsed: Any = json.loads(raw)
            except (ValueError, RecursionError):
                parsed = raw  # plain text such as thumbdown, sent without JSON quotes
            found = self.score(parsed)
            if found is not None:
                return found
        return self.score(attributes)


def _explanation(value: Mapping[str, Any]) -> str | None:
    for key in _EXPLANATION_FIELDS:
        text = value.get(key)
        if isinstance(text, str) and text:
            return text
    return None
