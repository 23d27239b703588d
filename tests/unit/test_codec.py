"""ipc.codec: framing with split feeds, garbage and oversize frames."""

import struct

import msgpack
import pytest
from hypothesis import given, strategies as st

from hoststated.ipc import codec

values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text() | st.binary(),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=20)


@given(st.lists(values, min_size=1, max_size=5), st.integers(1, 7))
def test_roundtrip_any_split(objs, step):
    data = b"".join(codec.encode(o) for o in objs)
    dec = codec.Decoder()
    out = []
    for i in range(0, len(data), step):
        out += dec.feed(data[i:i + step])
    assert out == objs
    assert dec.pending == 0


def test_byte_by_byte_and_pending():
    frame = codec.encode({"cmd": "show hosts"})
    dec = codec.Decoder()
    for b in frame[:-1]:
        assert dec.feed(bytes([b])) == []
    assert dec.pending == len(frame) - 1          # a half-sent frame is visible
    assert dec.feed(frame[-1:]) == [{"cmd": "show hosts"}]


def test_oversize_length_rejected_before_body():
    dec = codec.Decoder(max_frame=100)
    with pytest.raises(codec.FrameError, match="exceeds the limit of 100"):
        dec.feed(struct.pack(">I", 101))
    with pytest.raises(codec.FrameError):       # out of sync: stays failed
        dec.feed(codec.encode(1))


def test_encode_refuses_oversize():
    with pytest.raises(codec.FrameError):
        codec.encode("x" * 200, max_frame=100)


def test_garbage_body():
    body = b"\xc1\xc1\xc1"                      # 0xc1 is never used in msgpack
    with pytest.raises(codec.FrameError, match="malformed"):
        codec.Decoder().feed(struct.pack(">I", len(body)) + body)


def test_trailing_bytes_in_body_is_garbage():
    body = msgpack.packb(1) + msgpack.packb(2)
    with pytest.raises(codec.FrameError):
        codec.Decoder().feed(struct.pack(">I", len(body)) + body)


def test_integer_map_keys_allowed():
    assert codec.Decoder().feed(codec.encode({1: "up"})) == [{1: "up"}]


def test_ascii_garbage_as_length_is_oversize():
    # "GET / HTTP/1.0" read as a length is ~1.2 GB
    with pytest.raises(codec.FrameError, match="exceeds"):
        codec.Decoder(max_frame=65536).feed(b"GET / HTTP/1.0\r\n")


def test_lines_split_and_bad_line():
    dec = codec.LineDecoder(max_line=100)
    assert dec.feed(b'{"cmd": "po') == []
    assert dec.feed(b'll"}\n\n{"cmd"') == [{"cmd": "poll"}]
    out = dec.feed(b': nope}\n')
    assert len(out) == 1 and isinstance(out[0], codec.BadLine)
    assert dec.feed(b'{"v": 1}\n') == [{"v": 1}]   # a bad line does not desync


def test_line_too_long_without_newline():
    dec = codec.LineDecoder(max_line=10)
    with pytest.raises(codec.FrameError, match="longer than 10"):
        dec.feed(b"{" + b"x" * 20)


def test_line_too_long_with_newline():
    with pytest.raises(codec.FrameError):
        codec.LineDecoder(max_line=10).feed(b"{" + b"x" * 20 + b"\n")


def test_encode_line():
    assert codec.encode_line({"ok": True, "data": None}) == b'{"ok":true,"data":null}\n'
