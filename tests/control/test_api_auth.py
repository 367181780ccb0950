"""Token verification with real keys: a JWKS file, a JWKS served over HTTP (as an OIDC
provider does), a PEM public key and an HS256 secret file; API keys; bad claims."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from control.api.auth import Authenticator, AuthError, JwtConfig, Principal
from control.api.keys import KeyStore
from tests.control.api_server import AUDIENCE, ISSUER, Issuer


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
def jwks_url(issuer: Issuer) -> Iterator[str]:
    body = json.dumps(issuer.jwks()).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            return None

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_port}/.well-known/jwks.json"
    httpd.shutdown()
    httpd.server_close()


def _bearer(token: str) -> str:
    return f"Bearer {token}"


def test_jwks_file_and_url_verify_the_issuers_tokens(
    issuer: Issuer, jwks_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(issuer.jwks()))
    for source in (str(path), jwks_url):
        auth = Authenticator(JwtConfig(jwks=source, issuer=ISSUER, audience=AUDIENCE), None)
        who = auth.authenticate(_bearer(issuer.token("alice", "operator", ["acme", "b"])))
        assert who == Principal("alice", "operator", frozenset({"acme", "b"}), "jwt")
        assert who.sees("acme") and not who.sees("c") and not who.sees("*")
        assert who.may("flows.scale") and not who.may("tenants.write")
        root = auth.authenticate(_bearer(issuer.token("root", "admin", "*")))
        assert root.sees("anything") and root.sees("*")
        for bad in (
            issuer.token("alice", "admin", "*", ttl=-30),  # expired
            issuer.token("alice", "admin", "*", forged=True),  # another key
            issuer.token("alice", "admin", "*", iss="https://evil.test"),
            issuer.token("alice", "admin", "*", aud="someone-else"),
            issuer.token("alice", "root", "*"),  # no such role
            issuer.token("alice", "admin", "acme"),  # tenants must be a list or "*"
        ):
            with pytest.raises(AuthError) as info:
                auth.authenticate(_bearer(bad))
            assert bad not in str(info.value) and "\n" not in str(info.value)


def test_a_pem_public_key_or_an_hs256_secret_file(issuer: Issuer, tmp_path: Path) -> None:
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        issuer.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    auth = Authenticator(JwtConfig(key_file=str(pem), audience=AUDIENCE), None)
    assert auth.authenticate(_bearer(issuer.token("a", "viewer", ["x"]))).role == "viewer"
    secret = tmp_path / "hs.key"
    secret.write_text("s" * 40)
    auth = Authenticator(JwtConfig(key_file=str(secret)), None)
    now = int(time.time())
    good = jwt.encode(
        {"sub": "svc", "role": "admin", "tenants": ["x"], "exp": now + 60}, "s" * 40, "HS256"
    )
    assert auth.authenticate(_bearer(good)).subject == "svc"
    no_exp = jwt.encode({"sub": "svc", "role": "admin", "tenants": ["x"]}, "s" * 40, "HS256")
    wrong = jwt.encode(
        {"sub": "svc", "role": "admin", "tenants": ["x"], "exp": now + 60}, "t" * 40, "HS256"
    )
    for bad in (no_exp, wrong, issuer.token("a", "admin", "*")):  # an RS token: not accepted
        with pytest.raises(AuthError):
            auth.authenticate(_bearer(bad))
    secret.write_text("short")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Authenticator(JwtConfig(key_file=str(secret)), None)


def test_api_keys_and_malformed_headers(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys.json")
    key, secret = keys.create("viewer", ["acme"], "dash")
    auth = Authenticator(None, keys)  # no JWT configuration: keys only
    assert auth.authenticate(_bearer(secret)) == Principal(
        f"key:{key.id}", "viewer", frozenset({"acme"}), "key"
    )
    for header in (None, "", "Bearer", "Basic abc", _bearer(secret + "x"), _bearer("a.b.c")):
        with pytest.raises(AuthError):
            auth.authenticate(header)
    keys.revoke(key.id)
    with pytest.raises(AuthError, match="invalid API key"):
        auth.authenticate(_bearer(secret))
