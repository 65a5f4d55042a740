"""Write a new Alembic revision with the difference between the models and the current head."""

import sys
import tempfile
from pathlib import Path

from alembic import command

import controltower.server  # noqa: F401  (imports every subsystem's tables)
from controltower.core.db import Database

if len(sys.argv) != 3:
    sys.exit("usage: python scripts/new_migration.py REV_ID 'message'   (e.g. 0004 'iot file chunks')")
rev_id, message = sys.argv[1], sys.argv[2]
with tempfile.TemporaryDirectory() as tmp:
    db = Database(f"sqlite:///{Path(tmp) / 'head.db'}")
    command.upgrade(db.alembic_config(), "head")
    script = command.revision(db.alembic_config(), message=message, autogenerate=True, rev_id=rev_id)
    db.dispose()
print("wrote", script.path if script and not isinstance(script, list) else script)
