"""Users, login and the first-admin bootstrap."""

from __future__ import annotations

import re

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.core.errors import Conflict, Forbidden, NotAuthenticated, NotFound, ValidationFailed
from app.core.security import (
    DUMMY_PASSWORD_HASH,
    MIN_PASSWORD_LENGTH,
    hash_password,
    verify_password,
)
from app.db.base import get_by_id
from app.db.models import BrowserSession, Role, User
from app.services.workspaces import audit
from app.services.workspaces import service as workspaces

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    if not _EMAIL_RE.match(email) or len(email) > 320:
        raise ValidationFailed(f"{email!r} is not a valid e-mail address", param="email")
    return email


# zxcvbn's score, 0-4: 3 is "safely unguessable" against an online attack and slows an offline
# one, which is what a self-hosted server behind a sign-in throttle needs. "password12" scores 1.
MIN_PASSWORD_SCORE = 3
# zxcvbn refuses longer input (its matching is slow on long strings); the start of a long
# password judges it well enough.
_ZXCVBN_MAX_LENGTH = 72


def check_password_rules(password: str, *, email: str | None = None) -> None:
    """Refuse a password that is too short, too long or too easy to guess, saying which.

    Every place a password is set comes through here (first-admin setup, accounts made by an
    administrator or the CLI). `email` lets the strength check count the address's own words
    ("ada@example.com" choosing "ada-example-1") as easy to guess.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationFailed(
            f"the password must be at least {MIN_PASSWORD_LENGTH} characters long",
            param="password",
        )
    if len(password) > 1024:
        raise ValidationFailed(
            "the password is too long (1024 characters at most)", param="password"
        )
    if password.isdigit() or password.isalpha():
        raise ValidationFailed(
            "the password must mix letters with digits or symbols", param="password"
        )
    _check_strength(password, email=email)


def _check_strength(password: str, *, email: str | None) -> None:
    import zxcvbn

    hints = [part for part in re.split(r"[@.+_-]", email or "") if part]
    result = zxcvbn.zxcvbn(
        password[:_ZXCVBN_MAX_LENGTH], user_inputs=hints, max_length=_ZXCVBN_MAX_LENGTH
    )
    if result["score"] >= MIN_PASSWORD_SCORE:
        return
    feedback = result.get("feedback") or {}
    why = [feedback.get("warning") or "", *(feedback.get("suggestions") or [])]
    advice = " ".join(text.strip() for text in why if text and text.strip())
    if not advice:
        advice = "a few unrelated words with a digit or symbol make a strong one."
    raise ValidationFailed(
        f"the password is too easy to guess (strength {result['score']} of 4, at least "
        f"{MIN_PASSWORD_SCORE} needed): {advice}",
        param="password",
    )


def has_any_user(*, session: Session) -> bool:
    return (session.scalar(select(func.count()).select_from(User)) or 0) > 0


def get_by_email(*, session: Session, email: str) -> User | None:
    return session.scalar(select(User).where(User.email == email.strip().lower()))


def create_user(
    *,
    session: Session,
    email: str,
    password: str,
    is_admin: bool = False,
    workspace_name: str | None = None,
    created_by: User | None = None,
) -> User:
    """Create a user and their own workspace (they own it), so they can start working at once."""
    email = normalize_email(email)
    check_password_rules(password, email=email)
    if get_by_email(session=session, email=email) is not None:
        raise Conflict(f"a user with e-mail {email} already exists", param="email")
    user = User(email=email, password_hash=hash_password(password), is_admin=is_admin)
    session.add(user)
    session.flush()
    audit.record(
        session=session,
        actor=created_by,
        action="user.create",
        target_type="user",
        target_id=user.id,
        detail={"email": email, "is_admin": is_admin},
    )
    workspaces.create_workspace(
        session=session,
        name=workspace_name or f"{email.split('@')[0]}'s workspace",
        owner=user,
    )
    return user


def create_first_admin(*, session: Session, email: str, password: str) -> User:
    if has_any_user(session=session):
        raise Conflict("the first administrator has already been created; sign in instead")
    return create_user(
        session=session, email=email, password=password, is_admin=True, workspace_name="Default"
    )


def authenticate(*, session: Session, email: str, password: str) -> User:
    user = get_by_email(session=session, email=email)
    if user is None:
        verify_password(DUMMY_PASSWORD_HASH, password)
        raise NotAuthenticated("wrong e-mail or password")
    if not user.is_active or not verify_password(user.password_hash, password):
        raise NotAuthenticated("wrong e-mail or password")
    return user


# --- administration: what a server administrator does to accounts -------------------------
def require_admin(user: User) -> None:
    if not user.is_admin:
        raise Forbidden("only a server administrator can manage user accounts and workspaces")


def list_users(*, session: Session, admin: User) -> list[User]:
    require_admin(admin)
    return list(session.scalars(select(User).order_by(User.id)))


def get_user(*, session: Session, admin: User, user_id: int) -> User:
    require_admin(admin)
    user = get_by_id(session, User, user_id)
    if user is None:
        raise NotFound(f"no user with id {user_id}")
    return user


def set_active(*, session: Session, admin: User, user_id: int, active: bool) -> User:
    """Disable (or enable again) an account. A disabled user cannot sign in, and their browser
    sessions and API tokens stop working at once (every request checks `is_active`); their
    memberships and work stay, so enabling them restores everything."""
    user = get_user(session=session, admin=admin, user_id=user_id)
    if user.id == admin.id and not active:
        raise Conflict("you cannot disable your own account; another administrator can")
    if user.is_active == active:
        return user
    user.is_active = active
    if not active:
        # Not needed for safety (each request checks is_active) but keeps no dead sessions.
        session.execute(delete(BrowserSession).where(BrowserSession.user_id == user.id))
    audit.record(
        session=session,
        actor=admin,
        action="user.enable" if active else "user.disable",
        target_type="user",
        target_id=user.id,
        detail={"email": user.email},
    )
    session.flush()
    return user


def reset_password(*, session: Session, admin: User, user_id: int, password: str) -> User:
    """Set a new password for someone who lost theirs (the administrator tells them); their
    browser sessions end, so whoever knew the old password is signed out."""
    user = get_user(session=session, admin=admin, user_id=user_id)
    check_password_rules(password, email=user.email)
    user.password_hash = hash_password(password)
    session.execute(delete(BrowserSession).where(BrowserSession.user_id == user.id))
    audit.record(
        session=session,
        actor=admin,
        action="user.password_reset",
        target_type="user",
        target_id=user.id,
        detail={"email": user.email},
    )
    session.flush()
    return user


__all__ = ["Role", "authenticate", "create_first_admin", "create_user", "has_any_user"]
