"""Routes of robot schedules: CRUD, pause and resume, each answer with the next fire times."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status
from sqlalchemy.orm import Session

from controltower.core.auth import Operator, Principal, Viewer
from controltower.core.deps import SessionDep
from controltower.rpa import schedules
from controltower.rpa.models import RobotSchedule
from controltower.rpa.schedule_schemas import ScheduleCreate, SchedulePublic, ScheduleUpdate

router = APIRouter(prefix="/rpa/schedules", tags=["rpa"])

UNPROCESSABLE = 422


def _actor(principal: Principal) -> str:
    return f"{principal.name} ({principal.subject})"


def _schedule(session: Session, schedule_id: int) -> RobotSchedule:
    try:
        return schedules.get_schedule(session, schedule_id)
    except schedules.ScheduleNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc


def _refused(exc: ValueError) -> HTTPException:
    return HTTPException(UNPROCESSABLE, detail=str(exc))


@router.post("", status_code=status.HTTP_201_CREATED)
def create(body: ScheduleCreate, session: SessionDep, principal: Operator) -> SchedulePublic:
    """Start `robot`'s task on the cron schedule; refused with the field and reason if a run would be."""
    try:
        row = schedules.create_schedule(session, body, _actor(principal))
    except ValueError as exc:
        raise _refused(exc) from exc
    result = schedules.public(row)
    session.commit()
    return result


@router.get("")
def list_(session: SessionDep, _: Viewer, robot: str | None = None) -> list[SchedulePublic]:
    result = [schedules.public(row) for row in schedules.list_schedules(session, robot)]
    session.commit()
    return result


@router.get("/{schedule_id}")
def get(schedule_id: int, session: SessionDep, _: Viewer) -> SchedulePublic:
    result = schedules.public(_schedule(session, schedule_id))
    session.commit()
    return result


@router.patch("/{schedule_id}")
def update(schedule_id: int, body: ScheduleUpdate, session: SessionDep, _: Operator) -> SchedulePublic:
    row = _schedule(session, schedule_id)
    try:
        schedules.update_schedule(session, row, body)
    except ValueError as exc:
        raise _refused(exc) from exc
    result = schedules.public(row)
    session.commit()
    return result


@router.post("/{schedule_id}/pause")
def pause(schedule_id: int, session: SessionDep, _: Operator) -> SchedulePublic:
    row = schedules.set_paused(session, _schedule(session, schedule_id), True)
    result = schedules.public(row)
    session.commit()
    return result


@router.post("/{schedule_id}/resume")
def resume(schedule_id: int, session: SessionDep, _: Operator) -> SchedulePublic:
    """Fire again from now on; times missed while paused are not made up."""
    row = schedules.set_paused(session, _schedule(session, schedule_id), False)
    result = schedules.public(row)
    session.commit()
    return result


@router.delete("/{schedule_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete(schedule_id: int, session: SessionDep, _: Operator) -> Response:
    schedules.delete_schedule(session, _schedule(session, schedule_id))
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
