"""Sign-in for the JSON API and the dashboard: first-admin setup, login, logout, who am I."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from app.api.deps import CurrentUser, SessionDep, Workspace
from app.api.schemas.users import FirstAdminCreate, LoginRequest, MeRead, SessionRead, UserRead
from app.api.schemas.workspaces import WorkspaceWithRole
from app.services.workspaces import access as workspace_access
from app.services.workspaces import login_throttle, sessions, users

router = APIRouter(prefix="/api/v1", tags=["auth"])


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post("/setup", response_model=SessionRead, status_code=status.HTTP_201_CREATED)
def create_first_admin(
    body: FirstAdminCreate, request: Request, session: SessionDep
) -> SessionRead:
    """Create the first administrator; refused once any user exists."""
    user = users.create_first_admin(session=session, email=body.email, password=body.password)
    sessions.sign_in(request, user, session=session)
    return SessionRead(user=UserRead.model_validate(user), csrf_token=sessions.csrf_token(request))


@router.post("/session", response_model=SessionRead)
def login(body: LoginRequest, request: Request, session: SessionDep) -> SessionRead:
    client = _client(request)
    # Counted as a failure before the password is checked (concurrent guesses included).
    attempt = login_throttle.begin(session=session, email=body.email, client=client)
    user = users.authenticate(session=session, email=body.email, password=body.password)
    login_throttle.record_success(
        session=session, user=user, email=body.email, client=client, attempt=attempt
    )
    sessions.sign_in(request, user, session=session)
    return SessionRead(user=UserRead.model_validate(user), csrf_token=sessions.csrf_token(request))


@router.delete("/session", status_code=status.HTTP_204_NO_CONTENT)
def logout(request: Request, session: SessionDep, user: CurrentUser) -> None:
    sessions.sign_out(request, session=session)


@router.get("/me", response_model=MeRead)
def read_me(session: SessionDep, ctx: Workspace) -> MeRead:
    memberships = workspace_access.list_for_user(session=session, user=ctx.user)
    return MeRead(
        user=UserRead.model_validate(ctx.user),
        workspace=WorkspaceWithRole(
            id=ctx.workspace.id, name=ctx.workspace.name, slug=ctx.workspace.slug, role=ctx.role
        ),
        workspaces=[
            WorkspaceWithRole(id=ws.id, name=ws.name, slug=ws.slug, role=role)
            for ws, role in memberships
        ],
    )
