"""Host states and relayd's error vocabulary: a leaf module shared by the
daemon's processes and hoststatectl."""

from __future__ import annotations

import enum


class HostStatus(enum.StrEnum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"
    DISABLED = "disabled"


class HostError(enum.StrEnum):
    """Why a check failed: relayd's host_error() strings (relayctl(8) DIAGNOSTICS),
    plus the kinds hoststated adds. The detail ("got 302, want 200") travels
    beside it, never inside it, so scripts can match on the code."""
    NONE = "none"
    ABORTED = "aborted"
    INTERVAL_TIMEOUT = "interval timeout"
    ICMP_OK = "icmp ok"
    ICMP_READ_TIMEOUT = "icmp read timeout"
    ICMP_WRITE_TIMEOUT = "icmp write timeout"
    TCP_SOCKET_ERROR = "tcp socket error"
    TCP_SOCKET_LIMIT = "tcp socket limit"
    TCP_SOCKET_OPTION = "tcp socket option"
    TCP_CONNECT_FAIL = "tcp connect failed"
    TCP_CONNECT_TIMEOUT = "tcp connect timeout"
    TCP_CONNECT_OK = "tcp connect ok"
    TCP_WRITE_TIMEOUT = "tcp write timeout"
    TCP_WRITE_FAIL = "tcp write failed"
    TCP_READ_TIMEOUT = "tcp read timeout"
    TCP_READ_FAIL = "tcp read failed"
    SCRIPT_OK = "script ok"
    SCRIPT_FAIL = "script failed"
    TLS_CONNECT_ERROR = "tls connect error"
    TLS_CONNECT_FAIL = "tls connect failed"
    TLS_CONNECT_OK = "tls connect ok"
    TLS_CONNECT_TIMEOUT = "tls connect timeout"
    TLS_READ_TIMEOUT = "tls read timeout"
    TLS_WRITE_TIMEOUT = "tls write timeout"
    TLS_READ_ERROR = "tls read error"
    TLS_WRITE_ERROR = "tls write error"
    SEND_EXPECT_FAIL = "send/expect failed"
    SEND_EXPECT_OK = "send/expect ok"
    HTTP_CODE_ERROR = "http code malformed"
    HTTP_CODE_FAIL = "http code mismatch"
    HTTP_CODE_OK = "http code ok"
    HTTP_DIGEST_ERROR = "http digest malformed"
    HTTP_DIGEST_FAIL = "http digest mismatch"
    HTTP_DIGEST_OK = "http digest ok"
    # hoststated's own
    HTTP_BODY_FAIL = "http body mismatch"
    HTTP_BODY_OK = "http body ok"
    # issue 15: what real traffic showed (the detail says what: "3 resets from host in 1 s")
    PASSIVE = "passive"
    PROTOCOL_FAIL = "protocol check failed"   # detail names the protocol and reply
    PROTOCOL_OK = "protocol check ok"
    PARENT = "parent"                         # state inherited from a parent host
    # issue 14: check arp (the detail names the interface)
    ARP_OK = "arp ok"
    ARP_READ_TIMEOUT = "arp read timeout"
    ARP_WRITE_FAIL = "arp write failed"
