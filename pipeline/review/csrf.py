"""Cross-site request forgery protection of the review page's POSTs.

Each browser gets a random session cookie (HttpOnly, SameSite=Strict); every form carries a token
that is an HMAC of that session under a key made when the server starts. A POST is accepted only
with the session cookie and its token (compared in constant time), and, where the browser sends an
Origin header, only from the page's own origin. Another site can neither read the token nor, with
SameSite=Strict, send the cookie along.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets

COOKIE = "review_session"


class Csrf:
    def __init__(self, key: bytes | None = None):
        self.key = key or secrets.token_bytes(32)

    def token(self, session: str) -> str:
        return hmac.new(self.key, session.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def new_session() -> str:
        return secrets.token_urlsafe(32)

    def valid(self, session: str | None, token: str | None, origin: str | None, own_origin: str) -> bool:
        if not session or not token:
            return False
        if origin is not None and origin != own_origin:
            return False
        return hmac.compare_digest(self.token(session), token)
