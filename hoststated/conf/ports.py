"""Service names for `port NAME`, without /etc/services.

The common names map the same everywhere, so `port http` works with
--no-lookup and on machines with a bare /etc/services; other names are
looked up with getservbyname() by conf.load's resolver when lookups are
allowed.
"""

from __future__ import annotations

SERVICES: dict[str, int] = {
    "ftp-data": 20, "ftp": 21, "ssh": 22, "telnet": 23, "smtp": 25,
    "domain": 53, "dns": 53, "gopher": 70, "finger": 79, "http": 80, "www": 80,
    "kerberos": 88, "pop3": 110, "sunrpc": 111, "nntp": 119, "ntp": 123,
    "imap": 143, "imap2": 143, "snmp": 161, "snmp-trap": 162, "ldap": 389,
    "https": 443, "microsoft-ds": 445, "submissions": 465, "smtps": 465,
    "syslog": 514, "submission": 587, "ldaps": 636, "rsync": 873,
    "ftps": 990, "imaps": 993, "pop3s": 995, "socks": 1080, "openvpn": 1194,
    "ms-sql-s": 1433, "radius": 1812, "radius-acct": 1813, "nfs": 2049,
    "mysql": 3306, "rdp": 3389, "ms-wbt-server": 3389, "svn": 3690,
    "sip": 5060, "sips": 5061, "xmpp-client": 5222, "xmpp-server": 5269,
    "postgresql": 5432, "amqp": 5672, "x11": 6000, "redis": 6379,
    "http-alt": 8080, "webcache": 8080, "memcache": 11211,
}

