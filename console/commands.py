"""``edgeloop console serve`` (the labelling console in the browser) and ``edgeloop console
passwd`` (its accounts)."""

from __future__ import annotations

import asyncio
import getpass
import os
from pathlib import Path

import typer

from edgeloop.connection import ConnectionOptions, with_connection

PASSWORD_FILE_HELP = "File of console accounts (user:scrypt hash lines)."
DEFAULT_PASSWORD_FILE = Path("edgeloop-console.passwd")
TOKEN_FILE_HELP = "File of console login tokens (user:sha256 lines, `edgeloop console token`)."
STATE_DIR_HELP = ("Folder of the console's state (console.sqlite: skips, difficult flags, the "
                  "session key); default: the password file's folder.")


def register(app: typer.Typer) -> None:
    console = typer.Typer(help="The labelling console in the browser: review hard examples, "
                               "correct the model's boxes, save them to the job's dataset.",
                          no_args_is_help=True)
    app.add_typer(console, name="console")

    @console.command("serve")
    @with_connection
    def serve(
        password_file: Path = typer.Option(DEFAULT_PASSWORD_FILE, "--password-file",
                                           envvar="EDGELOOP_CONSOLE_PASSWORDS",
                                           help=PASSWORD_FILE_HELP),
        token_file: Path = typer.Option(None, "--token-file", envvar="EDGELOOP_CONSOLE_TOKENS",
                                        help=TOKEN_FILE_HELP),
        state_dir: Path = typer.Option(None, "--state-dir", help=STATE_DIR_HELP),
        host: str = typer.Option("127.0.0.1", "--host",
                                 help="Address to listen on; beyond loopback needs TLS or "
                                      "--insecure-bind."),
        port: int = typer.Option(8090, "--port", min=1, max=65535, help="Port to listen on."),
        tls_cert: Path = typer.Option(None, "--tls-cert", help="TLS certificate (PEM)."),
        tls_key: Path = typer.Option(None, "--tls-key", help="TLS private key (PEM)."),
        insecure_bind: bool = typer.Option(False, "--insecure-bind",
                                           help="Listen beyond loopback without TLS (only "
                                                "behind a proxy that adds it)."),
        job: str = typer.Option("", "--job", help="Job the queue opens first (namespace/name)."),
        cache: Path = typer.Option(Path("edgeloop-console-cache"), "--cache",
                                   help="Folder for the hard-example images shown."),
        session_hours: float = typer.Option(8.0, "--session-hours", min=0.01,
                                            help="Hours a login lasts."),
        connection: ConnectionOptions = None,  # type: ignore[assignment]
    ) -> None:
        """Serve the labelling console: jobs and the review queue, behind a login.

        Accepted examples go to the job's dataset as `edgeloop label import` sends them."""
        import signal

        from edgeloop.cli import require_extra

        require_extra("console", "starlette", "uvicorn", "itsdangerous")
        from console.app import ConsoleSettings
        from console.auth import TokenFile, Users, read_password_file
        from console.server import Listen, running
        from edgeloop.mqtt import NotConnected

        listen = Listen(host, port, tls_cert, tls_key, insecure_bind)
        try:
            listen.check()
            # with a token file, the password file is optional: it may not exist
            users = Users(read_password_file(password_file)
                          if token_file is None or password_file.exists() else {})
            tokens = TokenFile(token_file) if token_file is not None else None
        except ValueError as exc:  # PasswordFileError, TokenFileError, a bind problem
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        if not users.hashes and tokens is None:
            typer.echo(f"error: {password_file} has no accounts; add one with `edgeloop "
                       f"console passwd USER --password-file {password_file}`, or give "
                       "--token-file", err=True)
            raise typer.Exit(2)
        settings = ConsoleSettings(session_s=session_hours * 3600, default_job=job)
        state = state_dir if state_dir is not None else password_file.absolute().parent

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            async with running(connection, users, listen, cache, state, settings, tokens):
                typer.echo(f"console: open {listen.url}/ (broker {connection.broker})", err=True)
                await stop.wait()

        try:
            asyncio.run(main())
        except NotConnected as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(3) from None

    @console.command("passwd")
    def passwd(
        user: str = typer.Argument(..., help="Account name."),
        password_file: Path = typer.Option(DEFAULT_PASSWORD_FILE, "--password-file",
                                           envvar="EDGELOOP_CONSOLE_PASSWORDS",
                                           help=PASSWORD_FILE_HELP),
        password_env: str = typer.Option("", "--password-env",
                                         help="Read the password from this environment "
                                              "variable instead of asking."),
    ) -> None:
        """Add a console account or change its password (asked twice, not echoed)."""
        from console.auth import PasswordFileError, set_password

        if password_env:
            password = os.environ.get(password_env, "")
            if not password:
                typer.echo(f"error: environment variable {password_env} is empty or unset",
                           err=True)
                raise typer.Exit(2)
        else:
            password = getpass.getpass(f"password for {user}: ")
            if getpass.getpass("again: ") != password:
                typer.echo("error: the two passwords differ; nothing changed", err=True)
                raise typer.Exit(2)
        try:
            new = set_password(password_file, user, password)
        except (ValueError, PasswordFileError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"{'added' if new else 'changed'} {user} in {password_file}")

    @console.command("token")
    def token(
        user: str = typer.Argument(..., help="Account name."),
        token_file: Path = typer.Option(..., "--token-file", envvar="EDGELOOP_CONSOLE_TOKENS",
                                        help=TOKEN_FILE_HELP),
        revoke: bool = typer.Option(False, "--revoke",
                                    help="Remove the user's token instead: their sessions end "
                                         "at their next request."),
    ) -> None:
        """Make a login token for USER (printed once; the file keeps only its hash), replacing
        the user's previous token, or revoke it."""
        from console.auth import issue_token, revoke_token

        try:
            if revoke:
                removed = revoke_token(token_file, user)
                typer.echo(f"revoked {user}'s token in {token_file}" if removed
                           else f"{user} has no token in {token_file}; nothing changed")
                return
            secret = issue_token(token_file, user)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"token for {user} (shown once; {token_file} keeps its hash):", err=True)
        typer.echo(secret)

    @console.command("rotate-key")
    def rotate_key(
        state_dir: Path = typer.Option(Path("."), "--state-dir",
                                       help="The console's state folder (as given to serve)."),
    ) -> None:
        """Make a new session signing key: everyone logged in must log in again (after the
        console restarts; deleting console.sqlite does the same, and forgets skips and flags)."""
        from console.state import ConsoleState

        state = ConsoleState(state_dir)
        try:
            state.rotate_secret()
        finally:
            state.close()
        typer.echo(f"new session key in {state.path}; restart the console to use it")
