"""A local stand-in for the Hugging Face Hub, for tests: the endpoints huggingface_hub really calls.

Read off huggingface_hub's own source (hf_api.py, file_download.py, _commit_api.py):
  GET  /api/{models|datasets}/REPO[/revision/REV]           repo_info: the commit a revision resolves to
  GET  /api/{models|datasets}/REPO/tree/REV[/PATH]          list_repo_tree (paginated with a Link header)
  POST /api/{models|datasets}/REPO/paths-info/REV           get_paths_info (form field `paths`, repeated)
  HEAD/GET /[datasets/]REPO/resolve/REV/PATH                hf_hub_download: small files served here with their
                                                            git blob id as ETag; LFS files answer 302 to a second
                                                            server (the "CDN", another origin, so no token goes
                                                            there) with X-Linked-Size and X-Linked-Etag (sha256)
  POST /api/repos/create, /api/validate-yaml, /api/models/REPO/preupload/REV, /api/models/REPO/commit/REV
                                                            create_repo and upload_folder
Uploads are answered "regular" (content inline in the commit), so no LFS or Xet server is needed.

Misbehaviour on cue: `fake.script[(METHOD, PATH)]` is a list of actions taken by the next requests to PATH:
an int (that HTTP status, Retry-After 0), "corrupt" (the right size, one byte flipped), ("short", n) (only n
bytes, announced as such: a wrong size), ("drop", n) (the full length announced, n bytes sent, then closed).
Every request is logged with its server ("hub" or "cdn") and Authorization header.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".parquet", ".safetensors", ".bin")


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, files: dict[str, bytes] | None = None):
        self.commits: dict[str, dict[str, bytes]] = {}
        self.refs: dict[str, str] = {}
        self.commit(files or {}, "initial")

    def commit(self, files: dict[str, bytes], message: str, branch: str = "main") -> str:
        base = dict(self.commits.get(self.refs.get(branch, ""), {}))
        base.update(files)
        sha = hashlib.sha1(f"{message}{len(self.commits)}{sorted(base)}".encode()).hexdigest()
        self.commits[sha] = base
        self.refs[branch] = sha
        return sha

    def resolve(self, revision: str) -> str | None:
        return self.refs.get(revision) or (revision if revision in self.commits else None)


def entry(path: str, data: bytes) -> dict:
    doc = {"type": "file", "path": path, "size": len(data), "oid": git_oid(data)}
    if path.endswith(LFS_SUFFIXES):
        doc["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return doc


class FakeHub:
    def __init__(self):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.script: dict[tuple[str, str], list] = defaultdict(list)
        self.log: list[dict] = []
        self.page_size = 1000
        self.lock = threading.Lock()
        self.servers = []

    # ---- set-up -----------------------------------------------------------------------------------

    def add(self, repo: str, files: dict[str, bytes], kind: str = "dataset") -> Repo:
        self.repos[(kind, repo)] = Repo(files)
        return self.repos[(kind, repo)]

    def cdn_path(self, repo: str, path: str, kind: str = "dataset") -> str:
        data = self.repos[(kind, repo)].commits[self.repos[(kind, repo)].refs["main"]][path]
        return f"/cdn/{hashlib.sha256(data).hexdigest()}"

    def start(self) -> "FakeHub":
        for role in ("hub", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            server.fake, server.role, server.daemon_threads = self, role, True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self.servers.append(server)
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.servers[0].server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self.servers[1].server_address[1]}"

    def requests(self, server=None, method=None, path_start="") -> list[dict]:
        return [r for r in self.log if (server is None or r["server"] == server)
                and (method is None or r["method"] == method) and r["path"].startswith(path_start)]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.route("HEAD")

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    # ---- plumbing ---------------------------------------------------------------------------------

    def reply(self, status: int, body: bytes = b"", headers: dict | None = None, length: int | None = None):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD" and body:
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    def json(self, doc, status: int = 200, headers: dict | None = None):
        self.reply(status, json.dumps(doc).encode(), {"Content-Type": "application/json", **(headers or {})})

    def error(self, status: int, code: str, headers: dict | None = None):
        self.json({"error": code}, status, {"X-Error-Code": code, **(headers or {})})

    def route(self, method: str):
        fake: FakeHub = self.server.fake
        parts = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
        with fake.lock:
            fake.log.append({"server": self.server.role, "method": method, "path": unquote(parts.path),
                             "auth": self.headers.get("Authorization"), "range": self.headers.get("Range")})
            queue = fake.script[(method, unquote(parts.path))]
            action = queue.pop(0) if queue else None
        if isinstance(action, int):
            return self.reply(action, b"busy", {"Retry-After": "0"})
        if self.server.role == "cdn":
            return self.serve_cdn(unquote(parts.path), action)
        query = parse_qs(parts.query)
        m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)(?:/revision/([^/]+))?", parts.path)
        if m and method == "GET":
            return self.repo_info(m.group(1)[:-1], m.group(2), unquote(m.group(3) or "main"))
        m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", parts.path)
        if m:
            return self.tree(m.group(1)[:-1], m.group(2), unquote(m.group(3)), unquote(m.group(4) or "")[1:], query)
        m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/paths-info/([^/]+)", parts.path)
        if m:
            paths = parse_qs(body.decode()).get("paths", [])
            return self.paths_info(m.group(1)[:-1], m.group(2), unquote(m.group(3)), paths)
        m = re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", parts.path)
        if m:
            kind = "dataset" if m.group(1) else "model"
            return self.resolve(kind, m.group(2), unquote(m.group(3)), unquote(m.group(4)), action)
        if parts.path == "/api/repos/create":
            return self.create_repo(json.loads(body))
        if parts.path == "/api/validate-yaml":  # a README.md's metadata, checked before a commit
            return self.json({"errors": [], "warnings": []})
        m = re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/(preupload|commit)/([^/]+)", parts.path)
        if m and method == "POST":
            handler = self.preupload if m.group(3) == "preupload" else self.commit
            return handler(m.group(1)[:-1], m.group(2), unquote(m.group(4)), body)
        self.error(404, "NotFound")

    def find(self, kind: str, repo: str, revision: str):
        """(repo, commit) or an error answer already sent (then None)."""
        found = self.server.fake.repos.get((kind, repo))
        if found is None:
            self.error(404, "RepoNotFound")
            return None
        commit = found.resolve(revision)
        if commit is None:
            self.error(404, "RevisionNotFound")
            return None
        return found, commit

    # ---- read API ---------------------------------------------------------------------------------

    def repo_info(self, kind, repo, revision):
        if (found := self.find(kind, repo, revision)) is None:
            return
        r, commit = found
        self.json({"id": repo, "sha": commit, "private": False,
                   "siblings": [{"rfilename": p} for p in sorted(r.commits[commit])]})

    def tree(self, kind, repo, revision, folder, query):
        if (found := self.find(kind, repo, revision)) is None:
            return
        r, commit = found
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = folder + "/" if folder else ""
        listing, folders = [], set()
        for path, data in sorted(r.commits[commit].items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            listing.append(entry(path, data))
        listing += [{"type": "directory", "path": p, "oid": "0" * 40, "size": 0} for p in sorted(folders)]
        if folder and not listing:
            return self.error(404, "EntryNotFound")
        cursor = int(query.get("cursor", ["0"])[0])
        page = listing[cursor:cursor + self.server.fake.page_size]
        headers = {}
        if cursor + len(page) < len(listing):
            where = f"/{quote(folder, safe='')}" if folder else ""
            nxt = (f"{self.server.fake.url}/api/{kind}s/{repo}/tree/{quote(revision, safe='')}{where}"
                   f"?recursive={recursive}&cursor={cursor + len(page)}")
            headers["Link"] = f'<{nxt}>; rel="next"'
        self.json(page, headers=headers)

    def paths_info(self, kind, repo, revision, paths):
        if (found := self.find(kind, repo, revision)) is None:
            return
        r, commit = found
        self.json([entry(p, r.commits[commit][p]) for p in paths if p in r.commits[commit]])

    def resolve(self, kind, repo, revision, path, action):
        if (found := self.find(kind, repo, revision)) is None:
            return
        r, commit = found
        data = r.commits[commit].get(path)
        if data is None:
            return self.error(404, "EntryNotFound", {"X-Repo-Commit": commit})
        doc = entry(path, data)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{doc["oid"]}"'}
        if "lfs" in doc:
            sha = doc["lfs"]["oid"]
            return self.reply(302, b"", {**headers, "Location": f"{self.server.fake.cdn}/cdn/{sha}",
                                         "X-Linked-Size": str(len(data)), "X-Linked-Etag": f'"{sha}"'})
        self.send_bytes(data, action, headers)

    # ---- bytes ------------------------------------------------------------------------------------

    def serve_cdn(self, path, action):
        blobs = {hashlib.sha256(d).hexdigest(): d for r in self.server.fake.repos.values()
                 for files in r.commits.values() for d in files.values()}
        data = blobs.get(path.removeprefix("/cdn/"))
        if data is None:
            return self.reply(404)
        self.send_bytes(data, action, {})

    def send_bytes(self, data: bytes, action, headers: dict):
        start = 0
        wanted = self.headers.get("Range")
        if wanted:
            start = int(wanted.split("=")[1].split("-")[0])
            headers = {**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        piece = data[start:]
        if action == "corrupt":
            piece = bytes([piece[0] ^ 0xFF]) + piece[1:]
        if isinstance(action, tuple) and action[0] == "short":
            piece = piece[:action[1]]
        if isinstance(action, tuple) and action[0] == "drop":
            self.reply(206 if wanted else 200, piece[:action[1]], {**headers, "Connection": "close"}, len(piece))
            self.close_connection = True
            return
        self.reply(206 if wanted else 200, piece, headers)

    # ---- write API --------------------------------------------------------------------------------

    def create_repo(self, doc):
        fake = self.server.fake
        kind = doc.get("type") or "model"
        repo = f"{doc['organization']}/{doc['name']}" if doc.get("organization") else doc["name"]
        if (kind, repo) in fake.repos and not doc.get("exist_ok"):
            return self.json({"error": "You already created this model repo", "url": f"{fake.url}/{repo}"}, 409)
        fake.repos.setdefault((kind, repo), Repo())
        self.json({"url": f"{fake.url}/{repo}", "name": repo})

    def preupload(self, kind, repo, revision, body):
        if self.find(kind, repo, revision) is None:
            return
        files = json.loads(body)["files"]
        self.json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})

    def commit(self, kind, repo, revision, body):
        if (found := self.find(kind, repo, revision)) is None:
            return
        r, _ = found
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(x["value"] for x in lines if x["key"] == "header")
        files = {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}
        sha = r.commit(files, header.get("summary", ""), revision)
        fake = self.server.fake
        self.json({"commitUrl": f"{fake.url}/{repo}/commit/{sha}", "commitOid": sha, "success": True})
