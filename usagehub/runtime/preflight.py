"""Checks before a hub starts anything: a database URL that works, ports that are free; each fails in seconds.

A wrong ``--database-url`` would otherwise spend the pool's 15 s of retries and end
with "pool initialization incomplete"; a busy port would print a page of tracebacks.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from urllib.parse import urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from usagehub.errors import ConfigError, ConfigErrors

DATABASE_TIMEOUT_S = 3.0


def shown_url(url: str) -> str:
    """The URL without its password, fit to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def check_database_url(url: str, *, source: str = "--database-url") -> None:
    """A malformed or non-PostgreSQL URL is refused at once, without connecting."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme and scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"{shown_url(url)} is a {scheme} URL; usagehub needs PostgreSQL "
                          "(postgresql://user:password@host:5432/dbname)", file=source)
    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError as err:
        raise ConfigError(f"{shown_url(url)!r} is not a PostgreSQL URL ({str(err).strip()}); "
                          "expected postgresql://user:password@host:5432/dbname",
                          file=source) from err


def _cause(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    message = next((t for t in text if t and not t.startswith(("HINT", "DETAIL"))), type(err).__name__)
    lower = message.lower()
    if "password authentication failed" in lower or "no password supplied" in lower:
        return f"authentication failed ({message})"
    if "does not exist" in lower:
        return message
    if "connection refused" in lower:
        return f"nothing listens there: connection refused ({message})"
    if "could not translate host name" in lower or "name or service not known" in lower:
        return f"unknown host ({message})"
    if "timeout" in lower or "timed out" in lower:
        return f"host unreachable: no answer within {DATABASE_TIMEOUT_S:.0f} s"
    if "ssl" in lower or "invalid response" in lower or "unexpected" in lower or "protocol" in lower:
        return f"the server does not speak PostgreSQL ({message})"
    return message


async def check_database(url: str, *, source: str = "--database-url") -> None:
    """Connect once, within ``DATABASE_TIMEOUT_S``; a failure names the URL and the cause."""
    check_database_url(url, source=source)
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT_S):
            conn = await psycopg.AsyncConnection.connect(url, connect_timeout=int(DATABASE_TIMEOUT_S))
            await conn.close()
    except TimeoutError as err:
        raise ConfigError(f"cannot use the database at {shown_url(url)}: host unreachable, no answer within "
                          f"{DATABASE_TIMEOUT_S:.0f} s", file=source) from err
    except psycopg.Error as err:
        raise ConfigError(f"cannot use the database at {shown_url(url)}: {_cause(err)}",
                          file=source) from err


def _bind_problem(err: OSError, host: str, port: int, flag: str, what: str) -> ConfigError:
    if err.errno == errno.EADDRINUSE:
        return ConfigError(f"port {port} on {host} ({what}) is already in use; choose another with {flag}")
    return ConfigError(f"cannot listen on {host}:{port} ({what}): {err.strerror or err}; change {flag}")


def _port_problem(host: str, port: int, flag: str, what: str) -> ConfigError | None:
    if port == 0:
        return None
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            return _bind_problem(err, host, port, flag, what)
    return None


def listen_socket(host: str, port: int, flag: str, what: str) -> socket.socket:
    """A socket listening on host:port now; a failure (the port taken since the check) names the port and flag."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # as asyncio's create_server: IPv6 only, like the server it replaces
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(2048)  # uvicorn's default backlog
    except OSError as err:
        sock.close()
        raise _bind_problem(err, host, port, flag, what) from err
    sock.setblocking(False)
    return sock


def check_ports(ports: list[tuple[str, int, str, str]]) -> None:
    """Each (host, port, flag, what) must be free to listen on; all busy ones are reported at once."""
    problems = [p for host, port, flag, what in ports if (p := _port_problem(host, port, flag, what))]
    if problems:
        raise ConfigErrors(problems)
