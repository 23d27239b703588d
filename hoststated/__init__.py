"""hoststated: host status daemon for server load balancing on Linux."""

__version__ = "0.1.0"
