"""A child's start-up runs without the cyclic collector (cli.child_main:
proc.pause_gc) up to its role's settle_heap(), which turns it on again: so
every role's module must call settle_heap() when it has started, or it would
run without the collector for good."""

import ast
import gc
import importlib.util

from hoststated import cli, proc


class _Node:
    pass


def test_settle_heap_turns_the_collector_on_again():
    """At the start's end it freezes without collecting (a full collection
    walks everything the start made, for a few hundred objects); the first
    reload's collects what it left."""
    import weakref
    was = gc.isenabled()
    try:
        proc.pause_gc()
        assert not gc.isenabled()
        garbage = _Node()
        garbage.me = garbage                    # a cycle only the collector frees
        ref = weakref.ref(garbage)
        del garbage
        proc.settle_heap()                      # the start's
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0        # what start-up made is frozen
        assert ref() is not None
        proc.settle_heap()                      # a reload's
        assert ref() is None
    finally:
        gc.unfreeze()
        (gc.enable if was else gc.disable)()


def test_every_role_settles_its_heap():
    for role, module in cli.ROLES.items():
        path = importlib.util.find_spec(module).origin
        with open(path) as f:
            tree = ast.parse(f.read())
        calls = {n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", None)
                 for n in ast.walk(tree) if isinstance(n, ast.Call)}
        assert "settle_heap" in calls, f"{role} ({module}) never calls settle_heap()"
