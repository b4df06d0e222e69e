"""A local HTTP server that misbehaves on cue (drops, stalls, wrong lengths, redirects, 5xx), for the download tests.

Started by the tests on 127.0.0.1 ephemeral ports; nothing else is ever contacted.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from gptforge.data.fetcher import RetryPolicy

FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, timeout=5.0, chunk=4096)


def payload(n: int, seed: int = 0) -> bytes:
    """Distinct, non-repeating bytes, so an offset mistake changes the content."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


class Fake:
    """State of one fake server: files, scripted misbehaviour per (method, path), and a request log."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.headers: dict[str, dict] = defaultdict(dict)  # extra headers per path
        self.redirects: dict[str, str] = {}
        self.script: dict[tuple, list] = defaultdict(list)
        self.ignore_range = False
        self.refuse_head = False
        self.slow: float = 0.0  # seconds between 4 KiB pieces
        self.hide_length = False  # answer HEAD and GET without Content-Length (a close-delimited body)
        self.release = threading.Event()  # a stalled answer waits for this
        self.log: list[dict] = []
        self.lock = threading.Lock()

    def requests(self, method=None, path=None):
        return [
            r for r in self.log if (method is None or r["method"] == method) and (path is None or r["path"] == path)
        ]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.answer("HEAD")

    def do_GET(self):
        self.answer("GET")

    def answer(self, method):
        fake: Fake = self.server.fake
        path = urlsplit(self.path).path
        with fake.lock:
            fake.log.append({"method": method, "path": path, "range": self.headers.get("Range"),
                             "auth": self.headers.get("Authorization")})
            queue = fake.script[(method, path)]
            action = queue.pop(0) if queue else None
        if isinstance(action, int):
            self.send_response(action)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path in fake.redirects:
            self.send_response(302)
            self.send_header("Location", fake.redirects[path])
            for k, v in fake.headers[path].items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if method == "HEAD" and fake.refuse_head:  # like a presigned CDN link signed for GET only
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = fake.files.get(path)
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, status = 0, 200
        wanted = self.headers.get("Range")
        if wanted and not fake.ignore_range and action != "ignore-range":
            start = int(wanted.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            end = wanted.split("-")[1]
            stop = int(end) + 1 if end else len(body)
            status = 206
        else:
            stop = len(body)
        piece = body[start:stop]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(body)}")
        length = action[1] if isinstance(action, tuple) and action[0] == "length" else len(piece)
        if not (fake.hide_length or isinstance(action, tuple) and action[0] == "no-length"):
            self.send_header("Content-Length", str(length))
        for k, v in fake.headers[path].items():
            self.send_header(k, v)
        self.end_headers()
        if method == "HEAD":
            return
        if isinstance(action, tuple) and action[0] in ("drop", "no-length", "stall"):
            piece = piece[: action[1]]  # then the connection closes (or stalls) short of the whole body
        if isinstance(action, tuple) and action[0] == "more":
            piece = piece + payload(action[1], seed=99)  # an endless body, as /dev/zero would send
        try:
            for i in range(0, len(piece), 4096):
                self.wfile.write(piece[i:i + 4096])
                if fake.slow:
                    self.wfile.flush()
                    time.sleep(fake.slow)
            if isinstance(action, tuple) and action[0] == "stall":
                self.wfile.flush()
                fake.release.wait(60)
        except (BrokenPipeError, ConnectionResetError):
            pass
