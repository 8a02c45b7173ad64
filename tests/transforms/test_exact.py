"""``needs_exact``: the cheap test for a frame the fast parser may change."""

from __future__ import annotations

import re

import orjson
from hypothesis import given
from hypothesis import strategies as st

from bridge.transforms.exact import needs_exact

#: the definition it implements: twenty ASCII digits in a row, or nineteen after a minus
_REFERENCE = re.compile(rb"[0-9]{20}|-[0-9]{19}")


@given(st.binary(max_size=300) | st.text(alphabet="0123456789 -٣x\n", max_size=80).map(str.encode))
def test_it_says_what_the_regular_expression_says(frame: bytes) -> None:
    assert needs_exact(frame) == (_REFERENCE.search(frame) is not None)


def test_twenty_digits_in_a_row_and_not_nineteen() -> None:
    assert needs_exact(b'{"n": 12345678901234567890}')
    assert not needs_exact(b'{"n": 1234567890123456789}')
    assert not needs_exact(b'{"n": 1234567890.1234567890}')
    # non-ASCII digits are not JSON numbers
    assert not needs_exact('{"n": "٣٣٣٣٣٣٣٣٣٣٣٣٣٣٣٣٣٣٣٣٣"}'.encode())


def test_integers_orjson_parses_as_floats_and_not_those_it_keeps() -> None:
    # Found by the property test of the normalizer: -9223372036854775809 has
    # nineteen digits, yet orjson parses it as a float (below signed 64 bits).
    for beyond in (b"-9223372036854775809", b"-9999999999999999999", b"18446744073709551616"):
        assert needs_exact(b'{"n": ' + beyond + b"}"), beyond
        assert isinstance(orjson.loads(beyond), float)
    for kept in (b"9999999999999999999", b"-999999999999999999"):
        assert not needs_exact(b'{"n": ' + kept + b"}"), kept
        assert isinstance(orjson.loads(kept), int)
    # (nineteen digits after a minus within range take the slower path: harmless)
    assert needs_exact(b'{"n": -9223372036854775808}')
