"""One gate in front of every route (UI, API, files): host, path, origin, login and CORS checks.

It wraps the whole ASGI application, so a route added later by any part of the program is behind
the same checks; nothing depends on each route remembering to ask for them. In order:

1. Host header allow-list (400): a web page that rebinds its own DNS name to 127.0.0.1 still sends
   its name as Host, so only loopback names, IP literals (an IP cannot be rebound) and the names the
   server was told about are answered.
2. Paths with `..`, backslashes, empty segments or drive letters (403, the same answer whether or
   not the file exists): no file route ever needs them.
3. Cross-site requests that change state (403): `Sec-Fetch-Site: cross-site`, an `Origin` that is
   not this server (including `Origin: null`), and, for the API, bodies that are not JSON (HTML
   forms can post those without a CORS preflight).
4. Login (401, HTTP Basic, constant-time compare) when any login is configured, with a limit on
   failed attempts per client address (429 with Retry-After).
5. Request bodies over the cap (413): refused by their Content-Length before any byte is read, and a
   body without one (chunked) is counted as it arrives, so no more than the cap is ever read.
6. CORS: inner `Access-Control-*` headers are removed; only origins given on the command line get
   them back.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from modules.app.api.auth import credentials_match

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
API_PREFIXES = ("/sdapi/", "/docs", "/openapi.json")
# The API's schema and its documentation page, public as in AUTOMATIC1111: the shape of the API is
# no secret, and clients read it before they log in.
PUBLIC_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/openapi.json"})
FILE_ROUTE_PREFIXES = ("/file=", "/file/", "/gradio_api/file", "/gradio_api/file=")
_DRIVE_LETTER = re.compile(r"(^|[=/])[A-Za-z]:")
_TRAVERSAL_IN_QUERY = re.compile(r"\.\.[/\\]|[/\\]\.\.|^\.\.$|=\.\.(&|$)")


@dataclass(frozen=True)
class GuardConfig:
    allowed_hosts: frozenset[str] = LOOPBACK_NAMES
    ui_credentials: tuple[tuple[str, str], ...] = ()
    api_credentials: tuple[tuple[str, str], ...] = ()
    cors_origins: frozenset[str] = frozenset()
    max_failed_logins: int = 10
    failed_login_window_s: float = 300.0
    limit_loopback_logins: bool = False  # a local user can read the flags anyway
    max_body_bytes: int | None = None  # None: no cap

    def credentials_for(self, path: str) -> tuple[tuple[str, str], ...]:
        """API paths take the API login, the rest the UI login; either one alone guards everything,
        so a UI login never leaves the API open (or the other way round)."""
        if path.startswith(API_PREFIXES):
            return self.api_credentials or self.ui_credentials
        return self.ui_credentials or self.api_credentials


def host_names_for(server_name: str | None, listen: bool, extra: Iterable[str] = ()) -> frozenset[str]:
    """Names the Host header may carry: loopback, the bound name, this machine's names when bound to
    every interface, and `--allowed-hosts`."""
    names = set(LOOPBACK_NAMES)
    if server_name:
        names.add(server_name.lower().strip("[]"))
    if listen or server_name in ("0.0.0.0", "::"):
        hostname = socket.gethostname().lower()
        names |= {hostname, f"{hostname}.local", socket.getfqdn().lower()}
    names |= {name.strip().lower() for name in extra if name.strip()}
    return frozenset(names)


def split_host(host_header: str) -> str:
    """'Example.com:7860' -> 'example.com'; '[::1]:7860' -> '::1'."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(host_header: str | None, allowed: frozenset[str]) -> bool:
    if "*" in allowed:
        return True
    if not host_header:
        return False
    host = split_host(host_header)
    try:
        ipaddress.ip_address(host)
        return True  # the page's own origin is this IP: nothing to rebind
    except ValueError:
        return host in allowed


def path_is_suspicious(raw_path: str) -> bool:
    """True for paths no route of ours serves: traversal, UNC/backslash, drive letters, `//`.
    Decoded twice, so `%252e%252e` is caught as well as `%2e%2e`."""
    once = unquote(raw_path)
    for path in (raw_path, once, unquote(once)):
        if "\\" in path or "//" in path or "\x00" in path or _DRIVE_LETTER.search(path):
            return True
        if any(segment == ".." for segment in re.split(r"[/=]", path)):
            return True
    return False


class LoginLimiter:
    """Failed logins per client address in a sliding window; over the limit, all logins from that
    address are refused until old failures age out (even a right password: no oracle)."""

    def __init__(self, max_failures: int, window_s: float, clock: Callable[[], float] = time.monotonic):
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str) -> deque[float]:
        now = self._clock()
        failures = self._failures.setdefault(client, deque())
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        return failures

    def retry_after(self, client: str) -> int:
        """Seconds until this client may try again; 0 when it may now."""
        with self._lock:
            failures = self._recent(client)
            if len(failures) < self.max_failures:
                return 0
            return max(1, int(failures[0] + self.window_s - self._clock()) + 1)

    def failed(self, client: str) -> None:
        with self._lock:
            self._recent(client).append(self._clock())


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


@dataclass
class Refusal:
    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)


def _is_loopback(client: str) -> bool:
    try:
        return ipaddress.ip_address(client).is_loopback
    except ValueError:
        return False


class HttpGuard:
    """ASGI middleware applying GuardConfig to every HTTP and WebSocket request."""

    def __init__(self, app, config: GuardConfig, routes: Sequence | None = None):
        self.app = app
        self.config = config
        self.routes = routes  # the app's routes, to tell unknown paths (a 404 either way) from real ones
        self.limiter = LoginLimiter(config.max_failed_logins, config.failed_login_window_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        origin = headers.get("origin")
        if scope["type"] == "http" and self._is_allowed_preflight(scope, headers):
            await self._respond(send, 204, "", self._cors_headers(origin, preflight=headers))
            return
        refusal = self.check(scope, headers)
        if refusal is not None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await self._respond(send, refusal.status, refusal.message, refusal.headers)
            return
        if scope["type"] == "http":
            send = self._with_cors(send, origin)
            if scope["path"].startswith(FILE_ROUTE_PREFIXES):
                send = self._uniform_file_refusals(send)
            if self.config.max_body_bytes is not None:
                receive, send = self._capped_body(receive, send, self.config.max_body_bytes)
        await self.app(scope, receive, send)

    def _uniform_file_refusals(self, send: Send) -> Send:
        """Missing and forbidden files get one answer, so file routes reveal nothing about what
        exists outside their folders (the inner answers differ and echo the path)."""
        replaced = False

        async def send_uniform(message: dict) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] in (403, 404):
                replaced = True
                await self._respond(send, 403, "File not allowed", {})
            elif not replaced:
                await send(message)

        return send_uniform

    @staticmethod
    def _body_too_large(limit: int) -> Refusal:
        return Refusal(413, f"request body larger than {limit / (1024 * 1024):g} MiB, the limit of this server "
                            f"(--max-body-size)")

    def _capped_body(self, receive: Receive, send: Send, limit: int) -> tuple[Receive, Send]:
        """Counts body bytes as the app reads them. Past the cap the client gets a 413, the app sees a
        disconnect (it stops reading and gives up), and whatever the app answers then is dropped."""
        received, refused, started = 0, False, False

        async def counting_receive() -> dict:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    if not started:
                        refusal = self._body_too_large(limit)
                        await self._respond(send, refusal.status, refusal.message, refusal.headers)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        return counting_receive, guarded_send

    # ---- checks ---------------------------------------------------------------------------------
    def check(self, scope: Scope, headers: dict[str, str]) -> Refusal | None:
        if not host_allowed(headers.get("host"), self.config.allowed_hosts):
            return Refusal(400, "Invalid host header")
        raw_path = scope.get("raw_path", b"").decode("latin-1") or scope.get("path", "")
        query = scope.get("query_string", b"").decode("latin-1")
        if path_is_suspicious(raw_path) or path_is_suspicious(scope.get("path", "")) or _TRAVERSAL_IN_QUERY.search(unquote(query)):
            return Refusal(403, "File not allowed")
        method = scope.get("method", "GET")
        if scope["type"] == "websocket" or method not in SAFE_METHODS:
            refusal = self._check_origin(headers) or self._check_body_type(scope["path"], method, headers)
            if refusal is not None:
                return refusal
        return self._check_login(scope, headers) or self._check_declared_size(headers)

    def _check_declared_size(self, headers: dict[str, str]) -> Refusal | None:
        """A body whose Content-Length is over the cap is refused before any of it is read."""
        limit = self.config.max_body_bytes
        declared = headers.get("content-length", "")
        if limit is not None and declared.isdigit() and int(declared) > limit:
            return self._body_too_large(limit)
        return None

    def _check_origin(self, headers: dict[str, str]) -> Refusal | None:
        origin = headers.get("origin")
        if origin is not None:
            if origin in self.config.cors_origins:
                return None
            if origin == "null" or urlsplit(origin).netloc.lower() != headers.get("host", "").lower():
                return Refusal(403, "cross-origin request refused")
            return None
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return Refusal(403, "cross-site request refused")
        return None

    @staticmethod
    def _check_body_type(path: str, method: str, headers: dict[str, str]) -> Refusal | None:
        """API calls that change state take JSON: a form or text/plain body is what a cross-site page
        can send without a preflight."""
        if not path.startswith(API_PREFIXES) or method == "GET":
            return None
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        has_body = headers.get("content-length", "0") not in ("0", "") or "transfer-encoding" in headers
        if content_type == "application/json" or (not content_type and not has_body):
            return None
        return Refusal(403, "state-changing API requests take a JSON body (Content-Type: application/json)")

    def _no_such_route(self, scope: Scope) -> bool:
        """Nothing would answer this path but a 404 (with the UI mounted at `/`, every path has a route)."""
        from starlette.routing import Match

        return self.routes is not None and all(route.matches(scope)[0] == Match.NONE for route in self.routes)

    def _check_login(self, scope: Scope, headers: dict[str, str]) -> Refusal | None:
        credentials = self.config.credentials_for(scope["path"])
        if not credentials or scope["path"] in PUBLIC_PATHS or self._no_such_route(scope):
            return None
        client = (scope.get("client") or ("unknown", 0))[0]
        limited = self.config.limit_loopback_logins or not _is_loopback(client)
        if limited and (wait := self.limiter.retry_after(client)):
            return Refusal(429, "too many failed logins; try again later", {"Retry-After": str(wait)})
        given = basic_credentials(headers.get("authorization"))
        if given is not None and credentials_match(list(credentials), *given):
            scope.setdefault("state", {})["user"] = given[0]
            return None
        if limited and given is not None:
            self.limiter.failed(client)
        return Refusal(401, "Incorrect username or password", {"WWW-Authenticate": "Basic"})

    # ---- CORS -----------------------------------------------------------------------------------
    def _is_allowed_preflight(self, scope: Scope, headers: dict[str, str]) -> bool:
        return (scope.get("method") == "OPTIONS" and "access-control-request-method" in headers
                and headers.get("origin") in self.config.cors_origins
                and host_allowed(headers.get("host"), self.config.allowed_hosts))

    def _cors_headers(self, origin: str | None, preflight: dict[str, str] | None = None) -> dict[str, str]:
        if origin is None or origin not in self.config.cors_origins:
            return {}
        result = {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true",
                  "Vary": "Origin"}
        if preflight is not None:
            result["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            result["Access-Control-Allow-Headers"] = preflight.get("access-control-request-headers", "")
            result["Access-Control-Max-Age"] = "600"
        return result

    def _with_cors(self, send: Send, origin: str | None) -> Send:
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self._cors_headers(origin).items()]

        async def send_with_cors(message: dict) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", [])
                        if not k.lower().startswith(b"access-control-")]
                message = {**message, "headers": kept + extra}
            await send(message)

        return send_with_cors

    @staticmethod
    async def _respond(send: Send, status: int, message: str, headers: dict[str, str]) -> None:
        body = ('{"detail": "%s"}' % message).encode() if message else b""
        raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})


def resolve_under(root: str | os.PathLike, requested: str) -> Path | None:
    """The file `requested` (relative to `root`) names, or None when it is not inside `root` once
    every link is resolved. Containment is decided on resolved paths with `commonpath`, never by a
    string prefix (`outputs_evil` is not inside `outputs`). Absolute, UNC, drive-letter and
    backslash forms are refused outright, on every OS, so callers give one answer for forbidden
    and missing files."""
    if not requested or "\x00" in requested or "\\" in requested or _DRIVE_LETTER.search(requested):
        return None
    if requested.startswith("/"):
        return None
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(real_root, requested))
    try:
        if os.path.commonpath([real_root, target]) != real_root:
            return None
    except ValueError:  # different drives
        return None
    return Path(target)
