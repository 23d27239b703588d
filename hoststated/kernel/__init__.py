"""Kernel tables (pfe's side): desired state, diff, and the engines.

    from hoststated.kernel import Reconciler, make_backend
    rec = Reconciler(config)            # backends from `engine` in the config
    rec.start()                         # dump, adopt, apply the rest
    rec.update({host_id: HostStatus.UP})
    rec.resync(); rec.reconfigure(new_config); rec.stop(clean=True)
"""

from .backend import Backend, BackendError, NoneBackend
from .reconciler import Reconciler, make_backend

__all__ = ["Backend", "BackendError", "NoneBackend", "Reconciler", "make_backend"]
