"""A throw-away certificate authority for the TLS checks, made with the openssl CLI.

`Pki(dir).ca()` makes a CA; `server_cert(name)` issues a server certificate for IP 127.0.0.1
and DNS localhost signed by it (TLS server auth, a fresh serial each time, so a renewed
certificate can be told apart from the one it replaces). Keys are PKCS#8 PEM.
"""

import os
import socket
import ssl

from harness import run

OPENSSL_TIMEOUT = 60


class Pki:
    def __init__(self, directory, subject="hoard e2e test CA"):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.subject = subject
        self.ca_cert = os.path.join(directory, "ca.pem")
        self.ca_key = os.path.join(directory, "ca.key")

    def ca(self):
        """A self-signed CA certificate and key; returns the certificate's path."""
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
             "-keyout", self.ca_key, "-out", self.ca_cert, "-subj", f"/CN={self.subject}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"], timeout=OPENSSL_TIMEOUT)
        return self.ca_cert

    def server_cert(self, name):
        """`name`.pem (leaf certificate) and `name`.key for 127.0.0.1 / localhost: (cert, key)."""
        cert = os.path.join(self.dir, f"{name}.pem")
        key = os.path.join(self.dir, f"{name}.key")
        csr = os.path.join(self.dir, f"{name}.csr")
        ext = os.path.join(self.dir, f"{name}.ext")
        with open(ext, "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\n"
                    "keyUsage=critical,digitalSignature,keyEncipherment\n"
                    "extendedKeyUsage=serverAuth\n"
                    "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-sha256",
             "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"], timeout=OPENSSL_TIMEOUT)
        run(["openssl", "x509", "-req", "-sha256", "-days", "2", "-in", csr,
             "-CA", self.ca_cert, "-CAkey", self.ca_key, "-set_serial", str(_serial()),
             "-extfile", ext, "-out", cert], timeout=OPENSSL_TIMEOUT)
        return cert, key


def serial_of(cert_path):
    """The serial number of a PEM certificate, upper-case hex as `openssl x509 -serial` prints it."""
    out = run(["openssl", "x509", "-in", cert_path, "-noout", "-serial"], timeout=OPENSSL_TIMEOUT)
    return out.stdout.decode().strip().split("=", 1)[1].upper()


def served_serial(port):
    """The serial number of the certificate a TLS server on 127.0.0.1:`port` presents (unverified)."""
    pem = ssl.get_server_certificate(("127.0.0.1", port), timeout=5)
    out = run(["openssl", "x509", "-noout", "-serial"], timeout=OPENSSL_TIMEOUT, input=pem.encode())
    return out.stdout.decode().strip().split("=", 1)[1].upper()


def handshake(port, ca_file, version, alpn=("h2", "http/1.1")):
    """A TLS handshake with 127.0.0.1:`port` trusting only `ca_file`, pinned to one protocol
    `version` (ssl.TLSVersion): (negotiated version, ALPN protocol or None)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ctx.maximum_version = version
    ctx.set_alpn_protocols(list(alpn))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.version(), tls.selected_alpn_protocol()


def _serial():
    return int.from_bytes(os.urandom(8), "big") | 1
