"""A real ``adctl serve`` process on a free port, with a JWKS of a test issuer, for the
API tests; and tokens: valid, expired, or signed by a key the server does not trust."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import CONTROL_KEY, ROOT
from tests.control.helpers import free_port

KID = "test-issuer-1"
ISSUER = "https://issuer.test"
AUDIENCE = "adctl"


class Issuer:
    """An OIDC-like token issuer: an RSA key, its JWKS, and tokens signed with it."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rogue = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**jwk, "kid": KID, "use": "sig", "alg": "RS256"}]}

    def token(
        self,
        sub: str,
        role: str,
        tenants: list[str] | str,
        ttl: float = 600,
        forged: bool = False,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        body = {
            "sub": sub,
            "role": role,
            "tenants": tenants,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now - 5,
            "exp": now + int(ttl),
            **claims,
        }
        key = self.rogue if forged else self.key
        return jwt.encode(body, key, algorithm="RS256", headers={"kid": KID})


class ApiServer:
    """``python -m control serve`` as a subprocess; ``url``, ``log`` and ``stop()``."""

    def __init__(self, tmp: Path, issuer: Issuer, *extra: str, env: dict[str, str] | None = None):
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "api.log"
        self.jwks = tmp / "jwks.json"
        self.jwks.write_text(json.dumps(issuer.jwks()))
        self.state = tmp / "adctl"
        self.keys_file = self.state / "api-keys.json"
        self.audit = self.state / "audit.jsonl"
        cmd = [
            sys.executable,
            "-m",
            "control",
            "--state-dir",
            str(self.state),
            "serve",
            "--port",
            str(self.port),
            "--jwks",
            str(self.jwks),
            "--jwt-issuer",
            ISSUER,
            "--jwt-audience",
            AUDIENCE,
            *extra,
        ]
        penv = {k: v for k, v in os.environ.items() if not k.startswith("AD_")}
        penv["AD_CONTROL_KEY"] = CONTROL_KEY  # shared by adctl and flows
        penv.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=penv,
            stdout=open(self.log, "wb"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"adctl serve did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def stop(self) -> None:
        """Stop the server, then kill any flow it left running."""
        from control.supervisor import Supervisor

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        flows = self.state / "flows"
        for d in sorted(flows.iterdir()) if flows.is_dir() else []:
            sv = Supervisor(d)
            if sv.running():
                sv.kill()
