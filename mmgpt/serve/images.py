"""Image bytes from an `image_url`: a base64 data: URL, or (only when allowed) an http(s) URL fetched with limits."""
from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
import urllib.error
import urllib.parse
import urllib.request
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
    if url.startswith("data:"):
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
    if not comma or not header.endswith(";base64"):
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


def _check_public(host: str, param: str) -> None:
    """Refuse hosts that resolve to loopback, private, link-local or reserved addresses (no reaching inside)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as e:
        raise APIError(400, f"{param}: cannot resolve image host {host!r} ({e})", param=param) from None
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global or ip.is_multicast:
            raise APIError(400, f"{param}: image host {host!r} resolves to a non-public address ({ip})", param=param)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003 - urllib's signature
        return None  # redirects are followed by _fetch, each target checked


def _fetch(url: str, limits: FetchLimits, param: str) -> bytes:
    opener = urllib.request.build_opener(_NoRedirect)
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise APIError(400, f"{param}: image redirected to a non-http(s) URL {url[:80]!r}", param=param)
        _check_public(parts.hostname, param)
        try:
            with opener.open(urllib.request.Request(url, headers={"User-Agent": "mmgpt"}),
                             timeout=limits.timeout_s) as response:
                data = response.read(limits.max_bytes + 1)
        except urllib.error.HTTPError as e:
            if e.code in (301, 302, 303, 307, 308) and e.headers.get("Location"):
                url = urllib.parse.urljoin(url, e.headers["Location"])
                continue
            raise APIError(400, f"{param}: fetching the image gave HTTP {e.code}", param=param) from None
        except (urllib.error.URLError, OSError) as e:
            raise APIError(400, f"{param}: cannot fetch the image ({e})", param=param) from None
        if len(data) > limits.max_bytes:
            raise APIError(400, f"{param}: the image is over {limits.max_bytes} bytes", param=param)
        return data
    raise APIError(400, f"{param}: more than {MAX_REDIRECTS} redirects", param=param)
