"""A Docker-Hub-like token service (`auth.docker.io/token`) for distribution's `auth: token`.

`GET /token?service=...&scope=repository:<name>:<actions>` answers
`{"token", "access_token", "expires_in", "issued_at"}` with an RS256 JWT whose header carries
the libtrust `kid` of the signing key, which is how distribution 2.8 finds the key in its
`rootcertbundle`. Anonymous callers get `pull`; users with a password may get more. Every
request is recorded so a test can count how often a mirror asked for a token.
"""

import base64
import datetime
import hashlib
import json
import os
import subprocess
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EXPIRES_IN = 300


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def libtrust_kid(spki_der):
    """libtrust's key id: base32 of the first 240 bits of sha256(SPKI DER), in groups of 4."""
    encoded = base64.b32encode(hashlib.sha256(spki_der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def parse_scope(scope):
    """`repository:team/app:pull,push` -> ("repository", "team/app", ["pull", "push"])."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if not kind or not name:
        return None
    return kind, name, [a for a in actions.split(",") if a]


class TokenRequest:
    """One recorded call: who asked (user or None) for which scopes, with which User-Agent."""

    def __init__(self, user, scopes, user_agent, status):
        self.user = user
        self.scopes = scopes
        self.user_agent = user_agent
        self.status = status


class TokenService:
    """The token service in a thread of this process, on an ephemeral loopback port."""

    def __init__(self, workdir, service, issuer, users, anonymous_actions=("pull",)):
        self.workdir = workdir
        self.service = service
        self.issuer = issuer
        self.users = users  # {user: (password, [actions])}
        self.anonymous_actions = list(anonymous_actions)
        self.requests = []
        self.lock = threading.Lock()
        self.key_path = os.path.join(workdir, "token-key.pem")
        self.cert_path = os.path.join(workdir, "token-cert.pem")
        self.server = None
        self.thread = None
        self.kid = None

    def generate_key(self):
        """An RSA key and a self-signed certificate for it (the registry's rootcertbundle)."""
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
             "-keyout", self.key_path, "-out", self.cert_path, "-days", "2",
             "-subj", "/CN=hoard-e2e-token-issuer"],
            check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        spki = subprocess.run(
            ["openssl", "pkey", "-in", self.key_path, "-pubout", "-outform", "DER"],
            check=True, capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
        ).stdout
        self.kid = libtrust_kid(spki)

    def start(self):
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                status, body = service.handle(self.path, self.headers)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="hoard-e2e"')
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, fmt, *args):  # keep the runner's output to check lines
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="token-service", daemon=True)
        self.thread.start()
        return self

    @property
    def port(self):
        return self.server.server_address[1]

    @property
    def realm(self):
        return f"http://127.0.0.1:{self.port}/token"

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def handle(self, path, headers):
        url = urllib.parse.urlsplit(path)
        query = urllib.parse.parse_qs(url.query)
        user_agent = headers.get("User-Agent", "")
        if url.path != "/token":
            return 404, {"details": "not found"}
        if query.get("service", [""])[0] != self.service:
            self._record(None, [], user_agent, 400)
            return 400, {"details": "unknown service"}
        user, allowed = None, self.anonymous_actions
        auth = headers.get("Authorization", "")
        if auth:
            try:
                scheme, _, cred = auth.partition(" ")
                user, _, password = base64.b64decode(cred).decode().partition(":")
            except Exception:  # noqa: BLE001 - malformed credentials are just wrong
                scheme, user, password = "", None, None
            if scheme.lower() != "basic" or user not in self.users or self.users[user][0] != password:
                self._record(user, [], user_agent, 401)
                return 401, {"details": "incorrect username or password"}
            allowed = self.users[user][1]
        scopes = query.get("scope", [])
        access = []
        for scope in scopes:
            parsed = parse_scope(scope)
            if parsed is None or parsed[0] != "repository":
                continue
            kind, name, actions = parsed
            access.append({"type": kind, "name": name, "actions": [a for a in actions if a in allowed]})
        self._record(user, scopes, user_agent, 200)
        token = self.sign(user or "", access)
        now = datetime.datetime.now(datetime.timezone.utc)
        return 200, {
            "token": token,
            "access_token": token,
            "expires_in": EXPIRES_IN,
            "issued_at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }

    def _record(self, user, scopes, user_agent, status):
        with self.lock:
            self.requests.append(TokenRequest(user, scopes, user_agent, status))

    def snapshot(self):
        with self.lock:
            return list(self.requests)

    def sign(self, subject, access):
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + EXPIRES_IN,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", self.key_path],
            input=signing_input.encode(), check=True, capture_output=True, timeout=30,
        ).stdout
        return f"{signing_input}.{b64url(signature)}"
