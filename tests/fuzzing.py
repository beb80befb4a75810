"""What the fuzz tests share: hostile values, the request budget, and what every answer must be.

The default run makes a few thousand requests (about 20 s). The long profile spreads
STRIPELINE_FUZZ_REQUESTS requests over the same tests and prints a tally at the end:

    STRIPELINE_FUZZ_REQUESTS=100000 .venv/bin/python -m pytest -n 0 -s tests/app/test_web_fuzz.py tests/app/test_api_fuzz.py
"""

from __future__ import annotations

import os
from collections import Counter

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Requests each fuzz test makes in the default run, and the total asked for by the long profile.
DEFAULT_EXAMPLES = {"unsigned": 300, "signed": 400, "api": 800}
LONG_REQUESTS = int(os.environ.get("STRIPELINE_FUZZ_REQUESTS", "0"))

TALLY: Counter = Counter()


def fuzz_settings(kind: str):
    """Hypothesis settings for one fuzz test: its share of the budget, no deadline."""
    examples = DEFAULT_EXAMPLES[kind]
    if LONG_REQUESTS:
        examples = max(examples, LONG_REQUESTS * examples // sum(DEFAULT_EXAMPLES.values()))
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module")
def fuzz_tally():
    """Prints how many requests the module made and what came back (for the long profile)."""
    yield TALLY
    if LONG_REQUESTS:
        print(f"\nfuzz tally: {dict(sorted(TALLY.items()))}")


def assert_sound(answer: httpx.Response) -> None:
    """No 5xx (every server is up), no traceback, and an error that says what went wrong."""
    TALLY["requests"] += 1
    TALLY[f"{answer.status_code // 100}xx"] += 1
    assert answer.status_code < 500, (answer.status_code, answer.text[:300])
    assert "Traceback" not in answer.text and 'File "' not in answer.text
    if answer.status_code >= 400 and answer.headers.get("content-type", "").startswith("application/json"):
        assert answer.json()["error"]


# Text no well-behaved client sends: NUL and other controls, lone combining marks, bidi
# overrides, private use, non-characters, astral planes; and plain text.
odd_characters = st.sampled_from(
    ["\x00", "\x01", "\x7f", "\u0085", "\u200b", "\u202e", "\u0301", "\ufeff", "\uffff", "\ue000", "\U0010ffff",
     "\U0001f600", "%", "/", "\\", "'", '"', "..", "%00", "é", "ß", "İ", "²", "١"]
)
odd_text = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
    st.lists(odd_characters | st.text(max_size=3), max_size=8).map("".join),
    st.integers(min_value=200, max_value=5000).map(lambda n: "x" * n),
)
# Numbers as JSON text, beyond what a double or PostgreSQL's numeric holds.
raw_numbers = st.one_of(
    st.sampled_from(["1e400", "-1e400", "1e-400", "1e-20000", "1E+308", "-0", "0.0", "1e131072",
                     "123456789012345678901234567890", "18446744073709551616", "-9223372036854775809",
                     "0." + "0" * 20000 + "1", "9" * 5000]),
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
