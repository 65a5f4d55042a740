"""Routes of the robot vault: names and descriptions for people, values only for the agent running the run."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, HTTPException, Response, status
from pydantic import BaseModel, Field, SecretStr

from controltower.core.auth import Admin, AgentPrincipal, Operator, Principal, Viewer
from controltower.core.deps import CtxDep, SessionDep
from controltower.rpa import runs, vault
from controltower.rpa.models import VaultSecret

router = APIRouter(prefix="/rpa", tags=["rpa"])

UNPROCESSABLE = 422


class SecretSet(BaseModel):
    value: SecretStr = Field(description="The secret; stored encrypted and never returned")
    description: str | None = Field(None, description="What it is for; omitted keeps the current one")


class SecretPublic(BaseModel):
    name: str
    description: str
    created_at: dt.datetime
    updated_at: dt.datetime
    updated_by: str


def _public(row: VaultSecret) -> SecretPublic:
    return SecretPublic(name=row.name, description=row.description, created_at=row.created_at,
                        updated_at=row.updated_at, updated_by=row.updated_by)


def _actor(principal: Principal) -> str:
    return f"{principal.name} ({principal.subject})"


@router.get("/vault")
def list_secrets(session: SessionDep, _: Viewer) -> list[SecretPublic]:
    """Names, descriptions and who changed each when; never a value."""
    result = [_public(row) for row in vault.list_secrets(session)]
    session.commit()
    return result


@router.get("/vault/{name}")
def get_secret(name: str, session: SessionDep, _: Viewer) -> SecretPublic:
    try:
        result = _public(vault.get_secret(session, name))
    except vault.SecretNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    session.commit()
    return result


@router.put("/vault/{name}")
def set_secret(name: str, body: SecretSet, response: Response, ctx: CtxDep, session: SessionDep,
               principal: Operator) -> SecretPublic:
    """Store a secret encrypted, or replace its value (201 when new, 200 when replaced)."""
    try:
        row, created = vault.set_secret(session, ctx.settings, name, body.value.get_secret_value(),
                                        body.description, _actor(principal))
    except vault.SecretRefused as exc:
        raise HTTPException(UNPROCESSABLE, detail=str(exc)) from exc
    except vault.VaultKeyError as exc:
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, detail=str(exc)) from exc
    ctx.events.publish("rpa.vault.changed", {"name": name, "action": "created" if created else "updated",
                                             "by": _actor(principal)}, session=session)
    result = _public(row)
    session.commit()
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return result


@router.delete("/vault/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_secret(name: str, ctx: CtxDep, session: SessionDep, principal: Operator) -> Response:
    try:
        vault.delete_secret(session, name)
    except vault.SecretNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    ctx.events.publish("rpa.vault.changed", {"name": name, "action": "deleted", "by": _actor(principal)},
                       session=session)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/vault/rotate")
def rotate(ctx: CtxDep, session: SessionDep, principal: Admin) -> dict[str, int]:
    """Re-encrypt every secret with the first key of CT_VAULT_KEY (all or none), so older keys can go."""
    try:
        count = vault.rotate(session, ctx.settings)
    except vault.VaultKeyError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    ctx.events.publish("rpa.vault.changed", {"name": None, "action": "rotated", "by": _actor(principal),
                                             "count": count}, session=session)
    session.commit()
    return {"rotated": count}


@router.get("/runs/{run_id}/secrets")
def run_secrets(run_id: int, response: Response, ctx: CtxDep, session: SessionDep,
                principal: AgentPrincipal) -> dict[str, str]:
    """The values of the secrets a run declares: only for the agent holding the run, only while it runs."""
    agent_id = int(principal.subject_id)
    try:
        run = runs.agent_run(session, run_id, agent_id)
    except runs.RunNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    except runs.NotRunOwner as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=str(exc)) from exc
    if run.status != "running":
        raise HTTPException(status.HTTP_409_CONFLICT,
                            detail=f"run {run_id} is {run.status}; secrets are handed out only while it runs")
    try:
        values = vault.reveal(session, ctx.settings, run.secrets)
    except vault.UnknownSecrets as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    except vault.VaultKeyError as exc:
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, detail=str(exc)) from exc
    ctx.events.publish("rpa.vault.read", {"run_id": run_id, "agent_id": agent_id, "names": sorted(values)},
                       session=session)
    session.commit()
    response.headers["Cache-Control"] = "no-store"
    return values
