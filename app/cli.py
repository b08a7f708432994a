"""The `llmide` command: serve the product, run a worker, migrate, manage users and tokens."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from app.core.settings import get_settings

cli = typer.Typer(help="LLM IDE: train, register and serve language models.", no_args_is_help=True)
user_cli = typer.Typer(help="Manage users.", no_args_is_help=True)
token_cli = typer.Typer(help="Manage API tokens.", no_args_is_help=True)
cli.add_typer(user_cli, name="user")
cli.add_typer(token_cli, name="token")


def _migrate() -> None:
    from app.db.migrate import upgrade_to_head, wait_for_database

    settings = get_settings()
    settings.ensure_dirs()
    wait_for_database(
        settings.sqlalchemy_url,
        attempts=settings.db_connect_attempts,
        delay_s=settings.db_connect_delay_s,
    )
    upgrade_to_head(settings.sqlalchemy_url)


@cli.command()
def migrate() -> None:
    """Apply database migrations (waits for the database first)."""
    _migrate()
    typer.echo("database is up to date")


@cli.command()
def serve(
    web_only: Annotated[
        bool, typer.Option("--web-only", help="Start only the web process (compose runs the rest).")
    ] = False,
    no_migrate: Annotated[bool, typer.Option("--no-migrate")] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Web processes (default LLMIDE_WEB_WORKERS, 2). One uses at most one core; "
            "sessions, the sign-in throttle and live updates are shared through the database "
            "(or Redis), so several behave as one.",
        ),
    ] = None,
) -> None:
    """Start the product: web, plus an embedded worker and inference process unless --web-only."""
    from app.supervisor import Supervisor, choose_inference_port

    settings = get_settings()
    if not web_only and not settings.inference_port_configured:
        # Handed to the children and the web processes through their environment.
        os.environ["LLMIDE_INFERENCE_PORT"] = str(choose_inference_port(settings))
        get_settings.cache_clear()
        settings = get_settings()
        typer.echo(f"[llmide] inference on {settings.inference_base_url}", err=True)
    if not no_migrate:
        _migrate()
    supervisor = Supervisor(settings)
    if not web_only:
        supervisor.add("worker", [sys.executable, "-m", "app.cli", "worker"])
        supervisor.add("inference", [sys.executable, "-m", "app.cli", "inference"])
    supervisor.run_web(workers=workers or settings.web_workers)


@cli.command()
def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues to consume.")] = "",
    concurrency: Annotated[int, typer.Option(min=1)] = 1,
    gpu: Annotated[
        str | None, typer.Option(help="Pin this worker to one GPU (sets CUDA_VISIBLE_DEVICES).")
    ] = None,
) -> None:
    """Run a Celery worker (training on `gpu`, preparation and evaluation on `cpu`)."""
    settings = get_settings()
    settings.ensure_dirs()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    # torch's OpenMP threads busy-wait by default, which starves everything else on a small
    # machine (training slowed ~10x when another process competed for the cores).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    queue_list = queues or settings.worker_queues
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "-Q",
        queue_list,
        "-c",
        str(concurrency),
        "--prefetch-multiplier",
        "1",
        "-l",
        "INFO",
        "-n",
        f"llmide-{os.getpid()}@%h",
    ]
    os.execv(sys.executable, argv)


@cli.command()
def inference() -> None:
    """Run the inference server process (holds loaded model versions)."""
    os.execv(sys.executable, [sys.executable, "-m", "workers.inference"])


@user_cli.command("create")
def user_create(
    email: str,
    password: Annotated[str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True)],
    admin: Annotated[bool, typer.Option("--admin")] = False,
) -> None:
    """Create a user (with their own workspace)."""
    from app.core.errors import DomainError
    from app.db.session import session_scope
    from app.services.workspaces import users

    try:
        with session_scope() as session:
            user = users.create_user(
                session=session, email=email, password=password, is_admin=admin
            )
            typer.echo(f"created user {user.email}" + (" (admin)" if admin else ""), err=True)
    except DomainError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None


@token_cli.command("create")
def token_create(email: str, name: Annotated[str, typer.Option("--name")] = "cli") -> None:
    """Create an API token for a user and print it alone on stdout (it is shown only once)."""
    from app.core.errors import DomainError
    from app.db.session import session_scope
    from app.services.workspaces import tokens, users

    try:
        with session_scope() as session:
            user = users.get_by_email(session=session, email=email)
            if user is None:
                typer.echo(f"error: no user with e-mail {email}", err=True)
                raise typer.Exit(1)
            _, secret = tokens.create_token(session=session, user=user, name=name)
    except DomainError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    typer.echo(secret)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
