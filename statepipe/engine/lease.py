"""Who owns a run (kept for importers; the owner ids live in statepipe.processes)."""

from statepipe.processes import new_owner_id, owner_is_dead

__all__ = ["new_owner_id", "owner_is_dead"]
