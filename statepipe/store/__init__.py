"""PostgreSQL persistence: the embedded server, the connection source and the one module holding
SQL (store.py). Names load lazily so that light consumers (records) do not import psycopg."""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "open_store":
        from statepipe.store.database import open_store

        return open_store
    if name == "Store":
        from statepipe.store.store import Store

        return Store
    raise AttributeError(name)
