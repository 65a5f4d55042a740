"""Regenerate the single initial Alembic revision from the current models (pre-release only)."""

import tempfile
from pathlib import Path

from alembic import command

import controltower.server  # noqa: F401  (imports every subsystem's tables)
from controltower.core.db import MIGRATIONS_DIR, Database

for old in (MIGRATIONS_DIR / "versions").glob("*.py"):
    old.unlink()
with tempfile.TemporaryDirectory() as tmp:
    db = Database(f"sqlite:///{Path(tmp) / 'empty.db'}")
    command.revision(db.alembic_config(), message="initial schema", autogenerate=True, rev_id="0001")
    db.dispose()
print("wrote", next((MIGRATIONS_DIR / "versions").glob("*.py")))
