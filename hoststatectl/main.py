"""hoststatectl's command line. (Filled in by the control-socket work.)"""


def main() -> int:
    return 0
