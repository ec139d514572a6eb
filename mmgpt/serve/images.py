"""Image bytes from an `image_url`: a base64 data: URL, or (only when allowed) an http(s) URL fetched with limits."""
from __future__ import annotations

import base64
import binascii
import http.client
import ipaddress
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass

from mmgpt.serve.schemas import APIError

DATA_TYPES = ("image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif")
MAX_REDIRECTS = 3


@dataclass(frozen=True)
class FetchLimits:
    """What an http(s) image URL may cost: refused unless `allowed`, then `timeout_s` and `max_bytes`."""

    allowed: bool = False
    timeout_s: float = 10.0
    max_bytes: int = 20 * 2**20


def image_bytes(url: str, limits: FetchLimits, param: str) -> bytes:
    """The bytes an image_url names; a bad URL, base64 or fetch is an APIError(400) naming `param`."""
    if url[:5].lower() == "data:":  # URL schemes are case-insensitive (RFC 3986)
        return _data_url(url, param)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        if not limits.allowed:
            raise APIError(400, f"{param}: http(s) image URLs are refused by this server (start it with "
                                f"--allow-image-urls to fetch them); send the image as a data:image/...;base64 URL",
                           param=param, code="image_url_not_allowed")
        return _fetch(url, limits, param)
    raise APIError(400, f"{param}: an image URL must be data:image/...;base64,... or http(s)://..., "
                        f"got {url[:40]!r}", param=param)


def _data_url(url: str, param: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.lower().endswith(";base64"):
        raise APIError(400, f"{param}: a data URL must read data:image/png;base64,<data>", param=param)
    media_type = header[len("data:"):-len(";base64")].lower()
    if media_type not in DATA_TYPES:
        raise APIError(400, f"{param}: unsupported image type {media_type!r}; allowed: {', '.join(DATA_TYPES)}",
                       param=param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise APIError(400, f"{param}: invalid base64 image data ({e})", param=param, code="invalid_base64") from None
    if not data:
        raise APIError(400, f"{param}: the data URL holds no image bytes", param=param)
    return data


NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052's well-known prefix: the last 32 bits are an IPv4 address


def _embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address reaches through a gateway (IPv4-mapped, 6to4, NAT64, IPv4-compatible),
    which must be public too."""
    if ip.version == 4:
        return []
    found = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip in NAT64 or int(ip) >> 32 == 0:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _resolve(host: str, port: int, param: str) -> str:
    """The one address an image is fetched from: `host` resolved once, refused unless every address is public.

    The fetch connects to this address itself, so a second lookup (DNS rebinding) cannot move it inside.
    """
    try:
        addresses = [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
    except (socket.gaierror, UnicodeError) as e:
        raise APIError(400, f"{param}: cannot resolve image host {host!r} ({e})", param=param) from None
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not all(a.is_global and not a.is_multicast for a in (ip, *_embedded_ipv4(ip))):
            raise APIError(400, f"{param}: image host {host!r} resolves to a non-public address ({ip})", param=param)
    if not addresses:
        raise APIError(400, f"{param}: image host {host!r} has no address", param=param)
    return addresses[0]


class _PinnedConnection(http.client.HTTPConnection):
    """HTTP(S) to an address resolved and checked beforehand; TLS checks the certificate against `tls_name` (SNI)."""

    def __init__(self, address: str, port: int, timeout: float, tls_name: str | None) -> None:
        super().__init__(address, port, timeout=timeout)
        self.tls_name = tls_name

    def connect(self) -> None:
        """Connect to the pinned address (no name lookup), wrapped in TLS for https."""
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.tls_name) if self.tls_name \
            else sock


def _too_large(limits: FetchLimits, param: str) -> APIError:
    return APIError(400, f"{param}: the image is over {limits.max_bytes} bytes", param=param)


def _get(url: str, limits: FetchLimits, param: str, redirected: bool = False) -> tuple[int, str | None, bytes]:
    """One GET of `url` at its checked address -> (status, Location header, body of at most max_bytes + 1)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        what = "image redirected to a URL" if redirected else "image URL"
        raise APIError(400, f"{param}: {what} without an http(s) scheme and host name: {url[:80]!r}", param=param)
    tls = parts.scheme.lower() == "https"
    try:
        port = parts.port
        host = parts.hostname.encode("idna").decode("ascii")
    except (ValueError, UnicodeError) as e:
        raise APIError(400, f"{param}: bad host or port in the image URL ({e})", param=param) from None
    connect_port = port or (443 if tls else 80)
    connection = _PinnedConnection(_resolve(host, connect_port, param), connect_port, limits.timeout_s,
                                   host if tls else None)
    host_header = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    # http.client sends the target as ASCII: other characters are percent-encoded, existing escapes kept
    target = urllib.parse.quote(urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, "")),
                                safe="/?=&%:@!$'()*+,;-._~")
    deadline = time.monotonic() + limits.timeout_s
    try:
        connection.request("GET", target, headers={"Host": host_header, "User-Agent": "mmgpt"})
        response = connection.getresponse()
        if response.status != 200:
            return response.status, response.getheader("Location"), b""
        declared = response.getheader("Content-Length", "")
        if declared.isdigit() and int(declared) > limits.max_bytes:
            raise _too_large(limits, param)
        data = bytearray()
        while len(data) <= limits.max_bytes:
            if time.monotonic() > deadline:
                raise APIError(400, f"{param}: the image did not arrive within {limits.timeout_s:g} s", param=param)
            chunk = response.read1(min(2**16, limits.max_bytes + 1 - len(data)))
            if not chunk:
                break
            data += chunk
        return response.status, None, bytes(data)
    except (OSError, http.client.HTTPException) as e:
        raise APIError(400, f"{param}: cannot fetch the image ({e})", param=param) from None
    finally:
        connection.close()


def _fetch(url: str, limits: FetchLimits, param: str) -> bytes:
    for hop in range(MAX_REDIRECTS + 1):
        status, location, data = _get(url, limits, param, redirected=hop > 0)
        if status in (301, 302, 303, 307, 308) and location:
            url = urllib.parse.urljoin(url, location)  # each target is resolved and checked in turn
            continue
        if status != 200:
            raise APIError(400, f"{param}: fetching the image gave HTTP {status}", param=param)
        if len(data) > limits.max_bytes:
            raise _too_large(limits, param)
        return data
    raise APIError(400, f"{param}: more than {MAX_REDIRECTS} redirects", param=param)
