"""A loopback TCP relay that limits the upstream's answers to a link speed, shared by all its
connections, like the one uplink a site pulls through.

On loopback the upstream answers at several GB/s, faster than SHA-256 runs on one core
(about 2 GB/s with SHA-NI), so a verifying mirror cannot keep pace with a direct GET there.
Behind a link of a real node's speed (1 Gbit/s by default) the mirror's hash, write and relay
all keep up, and the figure shows what a cold pull costs a site. The relay forwards bytes
unchanged (no HTTP parsing): the token challenge, the manifests and the blobs all pass, and
both the direct GET and the mirrors go through the same link.
"""

import socket
import threading
import time

from harness import free_port

PIECE = 64 * 1024


class Link:
    """Listens on 127.0.0.1:<port>, forwards each connection to 127.0.0.1:`target_port`; bytes
    towards the client are paced to `mbit` Mbit/s in all (one budget for every connection)."""

    def __init__(self, target_port, mbit):
        self.target_port = target_port
        self.rate = mbit * 1_000_000 / 8  # bytes per second
        self.lock = threading.Lock()
        self.free_at = 0.0  # when the link is next idle (time.monotonic)
        self.port = free_port()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)
        self.closed = False
        threading.Thread(target=self.accept, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def close(self):
        self.closed = True
        self.sock.close()

    def accept(self):
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self.pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self.pump, args=(upstream, client, True), daemon=True).start()

    def slot(self, n):
        """Reserves the link for `n` bytes; returns when they may be sent."""
        with self.lock:
            now = time.monotonic()
            start = max(now, self.free_at)
            self.free_at = start + n / self.rate
        return start

    def pump(self, src, dst, paced):
        try:
            while True:
                data = src.recv(PIECE)
                if not data:
                    break
                if paced:
                    wait = self.slot(len(data)) - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            src.close()
