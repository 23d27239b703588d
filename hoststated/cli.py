"""hoststated's command line. (Filled in by the config-language work.)"""


def main() -> int:
    return 0
