"""A loopback stand-in for the Hugging Face hub: the HTTP routes huggingface_hub's `snapshot_download` calls.

  GET  /api/models/{org}/{name}/revision/{rev}        repository info (the revision's commit sha)
  GET  /api/models/{org}/{name}/tree/{rev}            the file listing (recursive)
  HEAD /{org}/{name}/resolve/{rev}/{path}             file metadata (X-Repo-Commit, ETag, Content-Length)
  GET  /{org}/{name}/resolve/{rev}/{path}             file content
  HEAD/GET /datasets/{org}/{name}/resolve/{rev}/{path} a dataset's file (served from repos["datasets/org/name"])

Errors carry the hub's `X-Error-Code` header (RepoNotFound, RevisionNotFound, EntryNotFound), which is how
huggingface_hub tells them apart.  A file named in `truncate` is served with its full Content-Length but only
half its bytes before the connection closes (an interrupted download).  Point `HF_ENDPOINT` at `server.url`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class Repo:
  def __init__(self, files: dict[str, bytes], revisions=("main",)):
    self.files = files
    self.sha = hashlib.sha1(b"".join(sorted(files.values()))).hexdigest()  # 40 hex digits, as a commit
    self.revisions = set(revisions) | {self.sha}

  @classmethod
  def from_folder(cls, folder: Path, **kw) -> "Repo":
    return cls({p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}, **kw)


class HubServer:
  def __init__(self):
    self.repos: dict[str, Repo] = {}
    self.truncate: set[str] = set()
    self.requests: list[str] = []
    server = self

    class Handler(BaseHTTPRequestHandler):
      def log_message(self, *args):  # quiet
        pass

      def do_HEAD(self):
        server.handle(self, body=False)

      def do_GET(self):
        server.handle(self, body=True)

    self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.httpd.shutdown()
    self.httpd.server_close()

  # -- routing ----------------------------------------------------------------------------------------------------

  def handle(self, h: BaseHTTPRequestHandler, body: bool):
    path = unquote(urlparse(h.path).path)
    self.requests.append(f"{h.command} {path}")
    parts = path.strip("/").split("/")
    if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
      repo_id, kind, rev = "/".join(parts[2:4]), parts[4], "/".join(parts[5:])
      repo = self._repo(h, repo_id, rev)
      if repo is None:
        return
      if kind == "revision":
        info = {"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False,
                "siblings": [{"rfilename": name} for name in sorted(repo.files)]}
      else:
        info = [{"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": name}
                for name, data in sorted(repo.files.items())]
      return self._send(h, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
    prefix = ""
    if parts[0] == "datasets":
      prefix, parts = "datasets/", parts[1:]
    if len(parts) >= 5 and parts[2] == "resolve":
      repo_id, rev, name = prefix + "/".join(parts[:2]), parts[3], "/".join(parts[4:])
      repo = self._repo(h, repo_id, rev)
      if repo is None:
        return
      if name not in repo.files:
        return self._error(h, 404, "EntryNotFound", f"{name} not found", body)
      data = repo.files[name]
      headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                 "Content-Type": "application/octet-stream"}
      if body and name in self.truncate:
        h.send_response(200)
        for k, v in {**headers, "Content-Length": str(len(data))}.items():
          h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data[:len(data) // 2])
        h.wfile.flush()
        h.close_connection = True
        return
      return self._send(h, 200, data, headers, body)
    return self._error(h, 404, "RepoNotFound", "unknown route", body)

  def _repo(self, h, repo_id: str, rev: str):
    repo = self.repos.get(repo_id)
    if repo is None:
      self._error(h, 404, "RepoNotFound", f"Repository {repo_id} not found", True)
      return None
    if rev not in repo.revisions:
      self._error(h, 404, "RevisionNotFound", f"Revision {rev} not found", True)
      return None
    return repo

  @staticmethod
  def _send(h, status: int, data: bytes, headers: dict, body: bool):
    h.send_response(status)
    for k, v in {**headers, "Content-Length": str(len(data))}.items():
      h.send_header(k, v)
    h.end_headers()
    if body:
      h.wfile.write(data)

  def _error(self, h, status: int, code: str, message: str, body: bool):
    data = json.dumps({"error": message}).encode()
    self._send(h, status, data, {"X-Error-Code": code, "X-Error-Message": message,
                                 "Content-Type": "application/json"}, body and h.command != "HEAD")
