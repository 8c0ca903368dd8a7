"""Property tests: every item type round-trips, and the decoder raises only its own error."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from emsedge.adapters.hsms.secs2 import Item, Secs2DecodeError, decode, encode

_INT_RANGES = {
    "I1": (-(2**7), 2**7 - 1), "I2": (-(2**15), 2**15 - 1), "I4": (-(2**31), 2**31 - 1),
    "I8": (-(2**63), 2**63 - 1), "U1": (0, 2**8 - 1), "U2": (0, 2**16 - 1), "U4": (0, 2**32 - 1),
    "U8": (0, 2**64 - 1),
}  # fmt: skip


def _ints(fmt: str) -> st.SearchStrategy[Item]:
    lo, hi = _INT_RANGES[fmt]
    return st.lists(st.integers(lo, hi), max_size=8).map(lambda v: Item(fmt, tuple(v)))


leaves: st.SearchStrategy[Item] = st.one_of(
    st.binary(max_size=300).map(lambda b: Item("B", b)),
    st.lists(st.booleans(), max_size=8).map(lambda v: Item("BOOLEAN", tuple(v))),
    st.text(st.characters(max_codepoint=255), max_size=300).map(lambda s: Item("A", s)),
    st.text(st.characters(max_codepoint=255), max_size=20).map(lambda s: Item("J", s)),
    *[_ints(fmt) for fmt in _INT_RANGES],
    st.lists(st.floats(width=32, allow_nan=False), max_size=8).map(lambda v: Item("F4", tuple(v))),
    st.lists(st.floats(allow_nan=False), max_size=8).map(lambda v: Item("F8", tuple(v))),
)
items: st.SearchStrategy[Item] = st.recursive(
    leaves, lambda children: st.lists(children, max_size=6).map(lambda c: Item("L", tuple(c))), max_leaves=40
)


@given(items)
@settings(max_examples=400, deadline=None)
def test_every_item_type_round_trips_through_encode_and_decode(item: Item) -> None:
    wire = encode(item)
    assert decode(wire) == item
    assert encode(decode(wire)) == wire


@given(st.binary(max_size=64))
@settings(max_examples=2000, deadline=None)
def test_decoder_raises_only_its_own_error_on_arbitrary_bytes(data: bytes) -> None:
    try:
        item = decode(data)
    except Secs2DecodeError:
        return
    assert isinstance(item, Item)


@given(items, st.data())
@settings(max_examples=300, deadline=None)
def test_decoder_raises_only_its_own_error_on_corrupted_valid_items(item: Item, data: st.DataObject) -> None:
    wire = bytearray(encode(item))
    position = data.draw(st.integers(0, len(wire) - 1))
    wire[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    with contextlib.suppress(Secs2DecodeError):
        decode(bytes(wire[:cut]))
