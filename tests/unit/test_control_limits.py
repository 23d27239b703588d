"""The control server's budget (control.clients_per_socket) and the protocol's
error messages (messages.check_request, parse_command): pure functions."""

import logging

import pytest

from hoststated import control
from hoststated.ipc import messages
from hoststated.ipc.messages import CommandError, ErrorCode


# --- the descriptor budget ----------------------------------------------------

def test_clients_leave_the_checks_their_descriptors():
    # the systemd default soft limit, 3 checks at once, two sockets
    n = control.clients_per_socket(3, 2, nofile=1024)
    assert control.MIN_CLIENTS <= n
    # both sockets full and every check in flight fit, and as much again is spare
    used = control.FD_RESERVE + control.FD_PER_CHECK * 3 + 2 * n
    assert 1024 - used >= 2 * n
    # 1,100 clients (faults-found 1.3) do not fit in it
    assert 2 * n < 1100 - 3


def test_more_checks_fewer_clients():
    few = control.clients_per_socket(10, 1, nofile=4096)
    many = control.clients_per_socket(1000, 1, nofile=4096)
    assert many < few
    assert control.FD_RESERVE + control.FD_PER_CHECK * 1000 + many <= 4096


def test_a_high_limit_is_capped():
    assert control.clients_per_socket(3, 1, nofile=1 << 20) == control.MAX_CLIENTS


def test_no_room_warns_and_keeps_a_few(caplog):
    with caplog.at_level(logging.WARNING, logger="hoststated.control"):
        n = control.clients_per_socket(1000, 2, nofile=1024)
    assert n == control.MIN_CLIENTS
    assert "descriptor limit 1024 is too low for 1000 checks" in caplog.text


def test_this_process_limit_is_read():
    import resource
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert control.clients_per_socket(5, 1) == control.clients_per_socket(5, 1, nofile=soft)


def test_per_uid_only_on_the_restricted_socket():
    import socket
    a, b = socket.socketpair(socket.AF_UNIX)
    try:
        main = control.ControlServer(a, None, max_clients=100)
        ro = control.ControlServer(b, None, restricted=True, max_clients=100)
        assert main.per_uid is None
        assert ro.per_uid == control.PER_UID
        ro.max_clients = 4                 # a budget below PER_UID caps it too
        assert ro.per_uid == 4
    finally:
        a.close()
        b.close()


def test_peer_uid():
    import os
    import socket
    a, b = socket.socketpair(socket.AF_UNIX)
    try:
        assert control.peer_uid(a) == os.getuid()
    finally:
        a.close()
        b.close()


# --- the messages -------------------------------------------------------------

def error(req):
    with pytest.raises(CommandError) as e:
        messages.check_request(req)
    return e.value.code, e.value.message


def test_version_must_be_the_integer_1():
    assert error({"cmd": "show tables", "v": "1"}) == (
        ErrorCode.VERSION, "\"v\" must be the integer 1, not '1'")
    assert error({"cmd": "show tables", "v": 1.0}) == (
        ErrorCode.VERSION, '"v" must be the integer 1, not 1.0')
    assert error({"cmd": "show tables", "v": True})[1] == '"v" must be the integer 1, not True'
    assert error({"cmd": "show tables", "v": 2}) == (
        ErrorCode.VERSION, "protocol version 2 not supported (this daemon speaks version 1)")
    assert messages.check_request({"cmd": "show tables", "v": 1}).words == ("show", "tables")


@pytest.mark.parametrize("req, code", [
    ({"cmd": "x" * 1000}, ErrorCode.UNKNOWN_COMMAND),                   # unknown command
    ({"cmd": "show tables " + "y" * 1000}, ErrorCode.BAD_ARGUMENT),     # unexpected argument
    ({"cmd": "show tables", "z" * 60000: 1}, ErrorCode.BAD_REQUEST),   # unknown field
    ({"cmd": "show tables", "v": "9" * 60000}, ErrorCode.VERSION),
])
def test_a_client_word_is_never_echoed_in_full(req, code):
    got, message = error(req)
    assert got == code
    assert len(message) < 200
    assert "characters)" in message                # says how long it was


def test_a_short_word_is_echoed_as_is():
    assert error({"cmd": "dance"})[1] == "unknown command: dance"
    assert error({"cmd": "show tables", "x": 1})[1] == "unknown request field 'x'"
    assert messages.clip("abc") == "abc"
    assert messages.clip("a" * 100) == "a" * messages.CLIP + "... (100 characters)"
