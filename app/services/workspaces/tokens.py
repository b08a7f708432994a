"""API tokens: created once (the secret is shown once), stored hashed, revocable at once."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from app.core.errors import NotFound, ValidationFailed
from app.core.security import hash_token, new_token_secret
from app.db.base import get_by_id, utcnow
from app.db.models import ApiToken, User
from app.services.workspaces import audit


def create_token(*, session: Session, user: User, name: str = "api") -> tuple[ApiToken, str]:
    name = name.strip()
    if not name or len(name) > 100:
        raise ValidationFailed("a token name must have 1 to 100 characters", param="name")
    secret = new_token_secret()
    token = ApiToken(user_id=user.id, name=name, token_hash=hash_token(secret), prefix=secret[:12])
    session.add(token)
    session.flush()
    audit.record(
        session=session,
        actor=user,
        action="token.create",
        target_type="token",
        target_id=token.id,
        detail={"name": name, "prefix": token.prefix},
    )
    return token, secret


# How stale a token's `last_used_at` may be (the tokens page shows it to the minute). Writing it
# on every request made each API read a write transaction: a row lock and a commit on Postgres,
# the whole database's write lock on SQLite.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def user_for_secret(*, session: Session, secret: str) -> User | None:
    token = session.scalar(
        select(ApiToken)
        .options(joinedload(ApiToken.user))
        .where(ApiToken.token_hash == hash_token(secret))
    )
    if token is None or token.revoked_at is not None or not token.user.is_active:
        return None
    now = utcnow()
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        token.last_used_at = now
    return token.user


def live_hashes(*, session: Session, hashes: set[str]) -> set[str]:
    """Those of `hashes` whose token still signs someone in (not revoked, user active): the
    open websockets of the others are closed (app/realtime/credentials.py)."""
    if not hashes:
        return set()
    return set(
        session.scalars(
            select(ApiToken.token_hash)
            .join(User, User.id == ApiToken.user_id)
            .where(
                ApiToken.token_hash.in_(hashes),
                ApiToken.revoked_at.is_(None),
                User.is_active.is_(True),
            )
        )
    )


def list_tokens(*, session: Session, user: User) -> list[ApiToken]:
    return list(
        session.scalars(
            select(ApiToken)
            .where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
            .order_by(ApiToken.id)
        )
    )


def revoke_token(*, session: Session, user: User, token_id: int) -> None:
    token = get_by_id(session, ApiToken, token_id)
    if token is None or token.user_id != user.id or token.revoked_at is not None:
        raise NotFound(f"token {token_id} not found")
    token.revoked_at = utcnow()
    audit.record(
        session=session,
        actor=user,
        action="token.revoke",
        target_type="token",
        target_id=token.id,
        detail={"name": token.name},
    )
