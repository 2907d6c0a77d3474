"""Which Prometheus servers the operator may query, and what of a query reaches a log or a status.

Whoever may create an LLMDeployment names the URL in ``spec.autoscaling.prometheus.url``, and the operator
fetches it from inside the cluster with its own network identity. So the operator keeps an allowlist of
URL prefixes (``tidal run --prometheus-allow``, ``$TIDAL_PROMETHEUS_ALLOW``, the chart's
``operator.prometheus.allow``; by default only the chart's default URL) and :class:`PrometheusAccess` refuses
any other URL before a connection is opened. TLS is verified (optionally against a CA bundle). Failures are
reduced to the exception class and HTTP status code (:func:`error_text`): response bodies never reach a
condition or a log. The spec's extra ``selector`` is parsed into label matchers and re-rendered with escaped
values (:func:`parse_selector`), so it cannot close the selector and paste PromQL of its own.

Kept apart from :mod:`tidal.shell.prom` (the queries) because it is the operator's trust boundary: small,
pure and tested on its own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import SplitResult, urlsplit

from tidal.api.spec import DEFAULT_PROMETHEUS_URL

ALLOW_ENV: Final = "TIDAL_PROMETHEUS_ALLOW"
"""URL prefixes CRs may name, separated by commas or whitespace (added to ``--prometheus-allow``)."""
CA_BUNDLE_ENV: Final = "TIDAL_PROMETHEUS_CA_BUNDLE"
"""A PEM file of CAs for https Prometheus URLs (``--prometheus-ca-bundle`` wins)."""
DEFAULT_ALLOW: Final = (DEFAULT_PROMETHEUS_URL,)
"""The allowlist when none is configured: the API's default URL only."""
_PORTS: Final = {"http": 80, "https": 443}


def escape(value: str) -> str:
    """``value`` as the inside of a double-quoted PromQL string (backslash, quote and newline escaped)."""
    return (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )


_MATCHER = re.compile(
    r"""\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)\s*""",
    re.DOTALL,
)
_UNESCAPE: Final = {"n": "\n", "r": "\r", "t": "\t"}


def parse_selector(selector: str) -> list[tuple[str, str, str]]:
    """``label op "value"`` matchers, comma-separated (optionally in braces), as (label, op, decoded value).
    Raises ValueError naming the first part that is not a matcher."""
    text = selector.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    out: list[tuple[str, str, str]] = []
    pos = 0
    while text[pos:].strip():
        m = _MATCHER.match(text, pos)
        if m is None:
            raise ValueError(f'not a label matcher at {text[pos : pos + 40]!r} (expected label="value")')
        label, op, literal = m.groups()
        body = literal[1:-1]
        value = body if literal[0] == "`" else re.sub(r"\\(.)", lambda e: _UNESCAPE.get(e[1], e[1]), body)
        out.append((label, op, value))
        pos = m.end()
        if pos < len(text):
            if text[pos] != ",":
                raise ValueError(f"expected ',' at {text[pos : pos + 40]!r}")
            pos += 1
    return out


def render_matchers(pairs: Iterable[tuple[str, str, str]]) -> str:
    """Matchers as PromQL (``label op "escaped value"``, comma-separated)."""
    return ",".join(f'{label}{op}"{escape(value)}"' for label, op, value in pairs)


def redact(url: str) -> str:
    """``url`` without user information (``https://user:pass@host`` -> ``https://host``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=host).geturl()


def _split(url: str) -> SplitResult:
    parts = urlsplit(url.strip())
    if parts.scheme not in _PORTS or not parts.hostname:
        raise ValueError(f"{redact(url)!r} is not an http(s) URL with a host")
    return parts


def url_allowed(url: str, prefixes: Sequence[str]) -> bool:
    """Whether ``url`` is under one of ``prefixes``: same scheme, user, host and port, and a path equal to
    the prefix's or below it (``http://prom:9090`` allows ``http://prom:9090/sub``, not
    ``http://prom:90901`` nor ``http://prom:9090.evil``). URLs with a query or fragment are refused."""
    try:
        u = _split(url)
        u_port = u.port or _PORTS[u.scheme]
    except ValueError:
        return False
    if u.query or u.fragment:
        return False
    path = u.path.rstrip("/")
    for prefix in prefixes:
        p = _split(prefix)
        same = (u.scheme, u.username, u.hostname, u_port) == (
            p.scheme,
            p.username,
            p.hostname,
            p.port or _PORTS[p.scheme],
        )
        base = p.path.rstrip("/")
        if same and (path == base or path.startswith(base + "/")):
            return True
    return False


def error_text(exc: BaseException) -> str:
    """An error as its class and, when there was a response, its HTTP status code (never the body, which a
    hostile or misconfigured server controls, nor the message, which can quote it)."""
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    if code is None:
        m = re.match(r"HTTP Status Code (\d{3})", str(exc))  # prometheus-api-client's own exception
        code = int(m.group(1)) if m else None
    return type(exc).__name__ if code is None else f"{type(exc).__name__} (HTTP {code})"


@dataclass(frozen=True)
class PrometheusAccess:
    """The operator-level Prometheus settings: the URL prefixes CRs may name and the CA bundle for TLS."""

    allow: tuple[str, ...] = DEFAULT_ALLOW
    ca_bundle: str | None = None

    def __post_init__(self) -> None:
        for prefix in self.allow:
            _split(prefix)
            if urlsplit(prefix).query or urlsplit(prefix).fragment:
                raise ValueError(f"Prometheus allowlist entry {redact(prefix)!r} has a query or fragment")
        if self.ca_bundle is not None and not os.path.isfile(self.ca_bundle):
            raise ValueError(f"Prometheus CA bundle {self.ca_bundle!r} is not a readable file")

    def allows(self, url: str) -> bool:
        return url_allowed(url, self.allow)

    @property
    def verify(self) -> bool | str:
        """``requests``' ``verify``: the CA bundle's path, or ``True`` (the system's CAs)."""
        return self.ca_bundle or True


def access_from(
    flags: Sequence[str], ca_bundle: str | None, env: Mapping[str, str] | None = None
) -> PrometheusAccess:
    """The settings from ``tidal run``'s flags and the environment (flags and ``$TIDAL_PROMETHEUS_ALLOW``
    together; neither: :data:`DEFAULT_ALLOW`). ValueError on a malformed prefix or a missing CA file."""
    env = os.environ if env is None else env
    allow = [*flags, *re.split(r"[\s,]+", env.get(ALLOW_ENV, "").strip())]
    allow = [a for a in allow if a]
    return PrometheusAccess(
        allow=tuple(dict.fromkeys(allow)) or DEFAULT_ALLOW,
        ca_bundle=ca_bundle or env.get(CA_BUNDLE_ENV) or None,
    )


ACCESS = PrometheusAccess()
"""The settings readers use unless given their own (``tidal run`` sets them with :func:`configure`)."""


def configure(access: PrometheusAccess) -> None:
    """Set the operator's Prometheus settings (before the handlers create their reader)."""
    global ACCESS
    ACCESS = access


def current() -> PrometheusAccess:
    """The operator's Prometheus settings now."""
    return ACCESS


__all__ = [
    "ALLOW_ENV",
    "CA_BUNDLE_ENV",
    "DEFAULT_ALLOW",
    "PrometheusAccess",
    "access_from",
    "configure",
    "current",
    "error_text",
    "escape",
    "parse_selector",
    "redact",
    "render_matchers",
    "url_allowed",
]
