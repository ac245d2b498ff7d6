"""A TCP relay in front of the upstream: a throttle that can be turned on mid-run, and a count
of what went through it.

The upstream (distribution) streams as fast as loopback allows, so a 256 MiB blob is gone
before anything can happen to the mirror fetching it. Put this relay between them, set
`rate`, and a test can wait until a known number of bytes has passed and then act (kill the
fetching replica) while the blob is provably still streaming. distribution only logs a
request once it completed; the relay also sees the request lines of fetches that were cut
off, so "how many GETs reached the upstream" can be counted both ways.
"""

import re
import socket
import threading
import time

_REQUEST_LINE = re.compile(rb"(GET|HEAD|POST|PUT|PATCH|DELETE) (/\S*) HTTP/1\.[01]\r\n")


class Relay:
    """Listens on an ephemeral 127.0.0.1 port and relays every connection to `target_port`.

    `rate` (bytes per second, per connection, upstream to client) is read on every chunk, so
    changing it takes effect at once; None relays at full speed. `down_bytes` counts the bytes
    sent towards clients; `requests` lists (method, path) of every request line seen going
    upstream, in order.
    """

    CHUNK = 64 << 10

    def __init__(self, target_port):
        self.target_port = target_port
        self.rate = None
        self.down_bytes = 0
        self.requests = []
        self._lock = threading.Lock()  # guards the counters and the socket set
        self._sockets = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._stopped = False
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._stopped:
                    client.close()
                    upstream.close()
                    return
                self._sockets |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src, dst, downstream):
        started, sent = time.monotonic(), 0
        try:
            while True:
                data = src.recv(self.CHUNK)
                if not data:
                    break
                if not downstream:
                    with self._lock:
                        self.requests += [(m.decode(), p.decode()) for m, p in _REQUEST_LINE.findall(data)]
                dst.sendall(data)
                if downstream:
                    with self._lock:
                        self.down_bytes += len(data)
                    rate = self.rate
                    if rate:
                        sent += len(data)
                        ahead = started + sent / rate - time.monotonic()
                        if ahead > 0:
                            time.sleep(ahead)
                    else:
                        started, sent = time.monotonic(), 0
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def mark(self):
        """(requests seen, bytes sent down) now, to count from later."""
        with self._lock:
            return len(self.requests), self.down_bytes

    def requests_since(self, mark):
        with self._lock:
            return list(self.requests[mark[0]:])

    def bytes_since(self, mark):
        with self._lock:
            return self.down_bytes - mark[1]

    def blob_gets(self, mark, digest):
        """GET request lines of blob `digest` seen since `mark` (cut-off ones included)."""
        return [p for m, p in self.requests_since(mark) if m == "GET" and p.split("?")[0].endswith(f"/blobs/{digest}")]

    def stop(self):
        """Stops listening and cuts every relayed connection: the upstream is gone."""
        with self._lock:
            self._stopped = True
            sockets, self._sockets = self._sockets, set()
        self._listener.close()
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
