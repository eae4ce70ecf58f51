"""PostgreSQL persistence: the embedded server, the pool and the one module holding SQL."""

from statepipe.store.database import open_store
from statepipe.store.store import Store

__all__ = ["Store", "open_store"]
