"""SECS-II codec: known encodings from SEMI E5, edge cases of length bytes, and the decoder's errors."""

from __future__ import annotations

import pytest

from emsedge.adapters.hsms.secs2 import (
    BOOLEAN,
    F4,
    F8,
    U1,
    U4,
    A,
    B,
    DecodeBudget,
    Item,
    L,
    Secs2BudgetExceeded,
    Secs2DecodeError,
    Secs2EncodeError,
    decode,
    encode,
    num,
    to_sml,
)


@pytest.mark.parametrize(
    ("item", "wire"),
    [
        (L(), "0100"),
        (A("AB"), "41024142"),
        (B(0x80), "210180"),
        (BOOLEAN(True, False), "25020100"),
        (U1(7), "a50107"),
        (U4(3001), "b10400000bb9"),
        (num("U2", 1, 2), "a90400010002"),
        (num("I1", -1), "6501ff"),
        (num("I2", -2), "6902fffe"),
        (num("I4", -3), "7104fffffffd"),
        (num("I8", -4), "6108fffffffffffffffc"),
        (num("U8", 5), "a1080000000000000005"),
        (F4(1.5), "91043fc00000"),
        (F8(-2.0), "8108c000000000000000"),
        (Item("J", "x"), "450178"),
        (L(U4(1), A("x")), "0102b1040000000141" "0178"),
    ],
)
def test_items_encode_to_the_bytes_semi_e5_prescribes(item: Item, wire: str) -> None:
    assert encode(item).hex() == wire
    assert decode(bytes.fromhex(wire)) == item


def test_length_bytes_grow_from_one_to_three_with_the_data() -> None:
    assert encode(A("x" * 255))[:2] == bytes([0x41, 255])
    assert encode(A("x" * 256))[:3] == bytes([0x42, 1, 0])
    assert encode(A("x" * 65536))[:4] == bytes([0x43, 1, 0, 0])
    assert decode(encode(A("x" * 65536))) == A("x" * 65536)


def test_a_list_of_256_items_uses_two_length_bytes() -> None:
    big = L(*[U1(i % 256) for i in range(256)])
    assert encode(big)[:3] == bytes([0x02, 1, 0])
    assert decode(encode(big)) == big


def test_decoder_accepts_non_minimal_length_bytes() -> None:
    assert decode(bytes([0x43, 0, 0, 1, 0x41])) == A("A")


def test_deeply_nested_lists_decode_without_recursion() -> None:
    depth = 100_000
    data = bytes([0x01, 0x01]) * depth + bytes([0x01, 0x00])
    item = decode(data)
    for _ in range(depth):
        item = item[0]
    assert item == L()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated"),
        (b"\x41", "truncated"),
        (b"\x40\x01A", "no length bytes"),
        (b"\xfd\x01\x00", "unknown format"),
        (b"\x41\x05AB", "only 2 left"),
        (b"\x01\x03\x41\x00", "cannot fit"),
        (b"\x71\x03\x00\x00\x00", "not a multiple of 4"),
        (b"\x41\x01AB", "trailing"),
        (b"\x01\x02\x41\x00\x41\x05", "only 0 left"),
    ],
)
def test_decoder_raises_its_own_error_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(Secs2DecodeError, match=message):
        decode(data)


def test_encoder_refuses_values_the_format_cannot_hold() -> None:
    with pytest.raises(Secs2EncodeError):
        encode(U1(256))
    with pytest.raises(Secs2EncodeError):
        encode(A("€"))
    with pytest.raises(Secs2EncodeError):
        encode(Item("X9", ()))


def test_to_python_gives_plain_json_values() -> None:
    report = L(U4(1), A("PCB-1"), L(), U4(), BOOLEAN(True), num("I2", 1, 2), B(1, 2))
    assert report.to_python() == [1, "PCB-1", [], None, True, [1, 2], [1, 2]]


def test_sml_text_is_readable_and_elides_long_lists() -> None:
    text = to_sml(L(U4(1), A('say "hi"'), L(), B(0)))
    assert text == '<L [4]\n  <U4 1>\n  <A "say \\"hi\\"">\n  <L [0]>\n  <B 0x00>\n>'
    long = to_sml(L(*[U1(1)] * 100), max_items=3)
    assert "... 97 more" in long


def test_a_budget_refuses_deep_nesting_before_building_it() -> None:
    data = bytes([0x01, 0x01]) * 2000 + bytes([0x01, 0x00])
    with pytest.raises(Secs2BudgetExceeded, match="deeper than 32"):
        decode(data, DecodeBudget())
    assert decode(bytes([0x01, 0x01]) * 31 + bytes([0x01, 0x00]), DecodeBudget()).fmt == "L"


def test_a_budget_refuses_a_list_declaring_more_items_than_it_allows_at_its_header() -> None:
    # 8,000,000 empty lists: refused at the first header, nothing is built
    data = bytes([0x03, 0x7A, 0x12, 0x00]) + bytes([0x01, 0x00]) * 8_000_000
    with pytest.raises(Secs2BudgetExceeded, match="more than 250000 items"):
        decode(data, DecodeBudget(max_bytes=len(data)))
    with pytest.raises(Secs2BudgetExceeded, match="budget"):
        decode(data, DecodeBudget())
    numbers = encode(num("U1", *range(200)))
    with pytest.raises(Secs2BudgetExceeded, match="more than 100 items"):
        decode(numbers, DecodeBudget(max_items=100))
