"""The caller's API tokens: create (secret shown once), list, revoke."""

from __future__ import annotations

from fastapi import APIRouter, status

from app.api.deps import CurrentUser, SessionDep
from app.api.schemas.tokens import TokenCreate, TokenCreated, TokenRead
from app.services.workspaces import tokens

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])


@router.get("", response_model=list[TokenRead])
def read_tokens(session: SessionDep, user: CurrentUser) -> list[TokenRead]:
    return [TokenRead.model_validate(t) for t in tokens.list_tokens(session=session, user=user)]


@router.post("", response_model=TokenCreated, status_code=status.HTTP_201_CREATED)
def create_token(body: TokenCreate, session: SessionDep, user: CurrentUser) -> TokenCreated:
    token, secret = tokens.create_token(session=session, user=user, name=body.name)
    return TokenCreated(**TokenRead.model_validate(token).model_dump(), token=secret)


@router.delete("/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_token(token_id: int, session: SessionDep, user: CurrentUser) -> None:
    tokens.revoke_token(session=session, user=user, token_id=token_id)
