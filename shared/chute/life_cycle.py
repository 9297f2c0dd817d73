"""How much of a table chute may change, per table (`OlapConfig(life_cycle=...)`), as in Moose.

- `fully_managed` (default): chute creates the table, adds columns, changes column types that
  convert without loss, and drops columns of removed fields when told `--allow-destructive`.
- `deletion_protected`: the same, but chute never drops a column or the table.
- `externally_managed`: chute never creates or alters the table; it only checks that it
  exists with columns that can hold the model's values, and reports drift.
"""

from __future__ import annotations

import enum


class LifeCycle(enum.StrEnum):
    FULLY_MANAGED = "fully_managed"
    DELETION_PROTECTED = "deletion_protected"
    EXTERNALLY_MANAGED = "externally_managed"

    @classmethod
    def _missing_(cls, value: object) -> LifeCycle | None:
        # Moose spells the values in capitals ("FULLY_MANAGED"); accept both.
        if isinstance(value, str):
            lowered = value.lower()
            for member in cls:
                if member.value == lowered:
                    return member
        return None

    @property
    def may_alter(self) -> bool:
        return self is not LifeCycle.EXTERNALLY_MANAGED

    @property
    def may_drop(self) -> bool:
        return self is LifeCycle.FULLY_MANAGED
