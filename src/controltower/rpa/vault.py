"""The robot vault: named secrets encrypted with Fernet, the key from CT_VAULT_KEY or `<data-dir>/vault.key`."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controltower.config import Settings
from controltower.core.db import utcnow
from controltower.rpa.masking import Masker
from controltower.rpa.models import RobotRun, VaultSecret
from controltower.rpa.package import SECRET_NAME_RE

KEY_FILE = "vault.key"
MAX_VALUE_CHARS = 64 * 1024
MAX_DESCRIPTION_CHARS = 1000

_ciphers: dict[str, MultiFernet] = {}
_ciphers_lock = threading.Lock()


class SecretNotFound(LookupError):
    pass


class SecretRefused(ValueError):
    """Bad input for the vault; the message starts with the field."""


class UnknownSecrets(ValueError):
    """A run or schedule names secrets the vault does not hold; the message starts with `secrets`."""


class VaultKeyError(RuntimeError):
    """The vault key is malformed or does not decrypt what is stored."""


def key_path(settings: Settings) -> Path:
    return settings.data_dir / KEY_FILE


def _read_or_create_key(path: Path) -> bytes:
    """The key file's key; made on first use with mode 0600.

    The new key is written to a private temporary file and linked into place, which fails if the file
    exists: concurrent first uses agree on one key, and nobody reads a half-written file.
    """
    if path.exists():
        return path.read_bytes().strip()
    key = Fernet.generate_key()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".vault-key-")  # mkstemp makes it 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(key + b"\n")
        os.link(tmp, path)
    except FileExistsError:
        return path.read_bytes().strip()
    finally:
        os.unlink(tmp)
    return key


def cipher(settings: Settings) -> MultiFernet:
    """The vault's cipher: every key in CT_VAULT_KEY (the first encrypts, all decrypt), else the key file's."""
    setting = settings.vault_key.get_secret_value() if settings.vault_key is not None else ""
    path = key_path(settings).resolve()
    cache_key = hashlib.sha256(f"{setting}\0{path}".encode()).hexdigest()
    with _ciphers_lock:
        if cache_key in _ciphers:
            return _ciphers[cache_key]
        if setting.strip():
            keys, source = [k.strip().encode() for k in setting.split(",") if k.strip()], "CT_VAULT_KEY"
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            keys, source = [_read_or_create_key(path)], str(path)
        try:
            result = MultiFernet([Fernet(k) for k in keys])
        except ValueError:
            raise VaultKeyError(f"{source}: not a Fernet key (32 url-safe base64-encoded bytes; make one with "
                                f"python -c 'from cryptography.fernet import Fernet; "
                                f"print(Fernet.generate_key().decode())')") from None
        _ciphers[cache_key] = result
        return result


def check_name(name: str) -> str:
    if not SECRET_NAME_RE.match(name):
        raise SecretRefused(f"name: {name!r} must be letters, digits and _, not starting with a digit, "
                            f"at most 64 characters")
    return name


def get_secret(session: Session, name: str) -> VaultSecret:
    row = session.scalar(select(VaultSecret).where(VaultSecret.name == name))
    if row is None:
        raise SecretNotFound(f"no secret named {name!r} in the vault")
    return row


def list_secrets(session: Session) -> list[VaultSecret]:
    return list(session.scalars(select(VaultSecret).order_by(VaultSecret.name)))


def set_secret(session: Session, settings: Settings, name: str, value: str, description: str | None,
               actor: str) -> tuple[VaultSecret, bool]:
    """Store or replace a secret; True when it is new. `description=None` keeps the current one."""
    check_name(name)
    if not value or len(value) > MAX_VALUE_CHARS:
        raise SecretRefused(f"value: must be 1 to {MAX_VALUE_CHARS} characters")
    if description is not None and len(description) > MAX_DESCRIPTION_CHARS:
        raise SecretRefused(f"description: at most {MAX_DESCRIPTION_CHARS} characters")
    token = cipher(settings).encrypt(value.encode()).decode()
    row = session.scalar(select(VaultSecret).where(VaultSecret.name == name))
    if row is None:
        clash = session.scalar(select(VaultSecret.name).where(func.upper(VaultSecret.name) == name.upper()))
        if clash is not None:
            raise SecretRefused(f"name: {name!r} differs from the existing {clash!r} only in case; both would be "
                                f"the environment variable CT_SECRET_{name.upper()}")
        row = VaultSecret(name=name, description=description or "", ciphertext=token, updated_by=actor)
        session.add(row)
        session.flush()
        return row, True
    row.ciphertext = token
    if description is not None:
        row.description = description
    row.updated_at = utcnow()
    row.updated_by = actor
    session.flush()
    return row, False


def delete_secret(session: Session, name: str) -> None:
    session.delete(get_secret(session, name))
    session.flush()


def require(session: Session, names: Iterable[str]) -> list[str]:
    """The names, sorted; UnknownSecrets names each one the vault does not hold."""
    wanted = sorted(set(names))
    if not wanted:
        return []
    for name in wanted:
        if not SECRET_NAME_RE.match(name):
            raise UnknownSecrets(f"secrets: {name!r} is not a secret name (letters, digits, _)")
    held = set(session.scalars(select(VaultSecret.name).where(VaultSecret.name.in_(wanted))))
    missing = [n for n in wanted if n not in held]
    if missing:
        raise UnknownSecrets(f"secrets: no secret named {', '.join(map(repr, missing))} in the vault "
                             f"(add with `ctower vault set NAME`)")
    return wanted


def reveal(session: Session, settings: Settings, names: Iterable[str]) -> dict[str, str]:
    """The decrypted values of `names` (every one must exist)."""
    wanted = require(session, names)
    rows = session.scalars(select(VaultSecret).where(VaultSecret.name.in_(wanted)))
    box = cipher(settings)
    values = {}
    for row in rows:
        try:
            values[row.name] = box.decrypt(row.ciphertext.encode()).decode()
        except InvalidToken:
            raise VaultKeyError(f"secret {row.name!r} cannot be decrypted with the vault key "
                                f"(was CT_VAULT_KEY or {KEY_FILE} changed?)") from None
    return values


def run_masker(session: Session, settings: Settings, run: RobotRun) -> Masker:
    """A masker for the values of the run's secrets (nothing to mask if they are gone or undecryptable)."""
    if not run.secrets:
        return Masker(())
    try:
        return Masker(reveal(session, settings, run.secrets).values())
    except (UnknownSecrets, VaultKeyError):
        values = []
        for row in session.scalars(select(VaultSecret).where(VaultSecret.name.in_(run.secrets))):
            try:
                values.append(cipher(settings).decrypt(row.ciphertext.encode()).decode())
            except InvalidToken:
                continue
        return Masker(values)


def rotate(session: Session, settings: Settings) -> int:
    """Re-encrypt every secret with the first key of CT_VAULT_KEY, so older keys can be dropped; how many."""
    box = cipher(settings)
    rows = list(session.scalars(select(VaultSecret)))
    for row in rows:
        try:
            row.ciphertext = box.rotate(row.ciphertext.encode()).decode()
        except InvalidToken:
            raise VaultKeyError(f"secret {row.name!r} cannot be decrypted with any key of the vault "
                                f"(was CT_VAULT_KEY or {KEY_FILE} changed?)") from None
    session.flush()
    return len(rows)
