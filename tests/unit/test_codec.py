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


# --- which encoding a control client speaks (codec.stream_kind) -------------

@pytest.mark.parametrize("head, kind", [
    (b'{"cmd": "show tables"}\n', "json"),
    (b' {"cmd": "show tables"}\n', "json"),          # a leading space
    (b'\r\n\t {"cmd"', "json"),
    (codec.BOM + b'{"cmd"', "json"),                   # a UTF-8 BOM
    (codec.BOM + b'  {"cmd"', "json"),
    (b" show tables\n", "json"),                      # text after whitespace: a person
    (codec.encode({"cmd": "show tables"}), "msgpack"),
    (b"\x00\x00\x00\x05", "msgpack"),
    # a letter first: a command line (issue 13); an HTTP request is one too,
    # refused as an unknown command
    (b"GET / HTTP/1.0\r\n", "text"),
    (b"show hosts\n", "text"), (b"s", "text"),
    (b"\xc3\xa9", "msgpack"),                         # not an ASCII letter
    (b"", None), (b"   ", None), (b"\n\n", None),    # not known yet
    (codec.BOM[:1], None), (codec.BOM[:2], None), (codec.BOM, None), (codec.BOM + b" ", None),
])
def test_stream_kind(head, kind):
    assert codec.stream_kind(head) == kind


def test_every_msgpack_request_is_msgpack():
    # a request frame's length is far below 16 MB: its first byte is 0, never
    # whitespace, `{` or the BOM's
    for n in (0, 1, 255, 65536):
        assert codec.stream_kind(struct.pack(">I", n) + b"x") == "msgpack"


def test_text_lines():
    d = codec.TextDecoder(20)
    assert d.feed(b"show ho") == [] and d.pending == 7
    assert d.feed(b"sts\r\n\n  \npoll\nshow \xff\n") == ["show hosts", "poll", "show \ufffd"]
    assert d.pending == 0


def test_text_line_over_the_limit():
    d = codec.TextDecoder(10)
    with pytest.raises(codec.FrameError, match="longer than 10"):
        d.feed(b"x" * 11)
    with pytest.raises(codec.FrameError):          # and stays failed
        d.feed(b"\n")
    with pytest.raises(codec.FrameError, match="longer than 10"):
        codec.TextDecoder(10).feed(b"y" * 12 + b"\n")


def test_line_after_leading_whitespace_parses():
    assert codec.LineDecoder(100).feed(b'  \n \t{"cmd": "poll"}\n') == [{"cmd": "poll"}]


# --- malformed frames say what is wrong --------------------------------------

def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize("body, reason", [
    (b"\x91" * 60000 + b"\xc0", "malformed frame: nested too deeply"),   # 60,000 arrays deep
    (b"\xc1", "malformed frame: not msgpack (a reserved type byte)"),
    (msgpack.packb(1) + msgpack.packb(2), "malformed frame: bytes left over after the object"),
    (b"\x92\x01", "malformed frame: Unpack failed: incomplete input"),
    (b"\x81\x91\x01\x01", "malformed frame: unhashable type: 'list'"),
])
def test_malformed_frame_reasons(body, reason):
    with pytest.raises(codec.FrameError) as e:
        codec.Decoder(max_frame=1 << 20).feed(frame(body))
    assert str(e.value) == reason


def test_no_malformed_frame_without_a_reason():
    # every body that fails says why (the message is never "malformed frame: ")
    bodies = [bytes([b]) for b in range(256)] + [b"\xdd\xff\xff\xff\xff", b"\xa1\xff", b"\xd9"]
    for body in bodies:
        try:
            codec.decode_body(body)
        except codec.FrameError as e:
            assert str(e).removeprefix("malformed frame: ").strip(), body
