"""``needs_exact``: the cheap test for a frame the fast parser may change."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from bridge.transforms.exact import needs_exact

#: the definition it implements: twenty ASCII digits in a row
_REFERENCE = re.compile(rb"[0-9]{20}")


@given(st.binary(max_size=300) | st.text(alphabet="0123456789 ٣x\n", max_size=80).map(str.encode))
def test_it_says_what_the_regular_expression_says(frame: bytes) -> None:
    assert needs_exact(frame) == (_REFERENCE.search(frame) is not None)


def test_twenty_digits_in_a_row_and_not_nineteen() -> None:
    assert needs_exact(b'{"n": 12345678901234567890}')
    assert not needs_exact(b'{"n": 1234567890123456789}')
    assert not needs_exact(b'{"n": 1234567890.1234567890}')
    # non-ASCII digits are not JSON numbers
    assert not needs_exact('{"n": "٣٣٣٣٣٣٣٣٣٣٣٣٣٣٣٣٣٣٣٣٣"}'.encode())
