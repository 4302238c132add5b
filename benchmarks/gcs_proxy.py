"""A recording HTTP proxy in front of a Cloud Storage endpoint: what a client fetched, and how.

Point a client's endpoint variables (`data_pipelines.gcs.EMULATOR_VARIABLES`) at a `Proxy` and
read `proxy.requests`: (method, object name, Range header, bytes the client received) per
request. Responses are streamed, so a client that resets the connection early is counted for
what it actually took. Used by `benchmarks.pod_data` and the bucket tests, on 127.0.0.1 only.
"""

import http.client
import http.server
import threading
import urllib.parse

_OBJECT_PATHS = ("/storage/v1/b/", "/download/storage/v1/b/")


def object_name(path: str) -> str:
  """'/storage/v1/b/<bucket>/o/<name>?alt=media' -> '<name>' (URL-decoded); else ''."""
  route = urllib.parse.urlparse(path).path
  if not route.startswith(_OBJECT_PATHS) or "/o/" not in route:
    return ""
  return urllib.parse.unquote(route.split("/o/", 1)[1])


class Proxy:
  """Forwards every request to `upstream` and records it; `close()` stops it."""

  def __init__(self, upstream: str):
    target = urllib.parse.urlparse(upstream)
    self.requests: list[list] = []
    lock = threading.Lock()
    requests = self.requests

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def _forward(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        conn.request(self.command, self.path, body=body,
                     headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
        response = conn.getresponse()
        entry = [self.command, object_name(self.path), self.headers.get("Range"), 0]
        with lock:
          requests.append(entry)
        self.send_response(response.status)
        for key, value in response.getheaders():
          if key.lower() not in ("transfer-encoding", "connection"):
            self.send_header(key, value)
        if response.getheader("Content-Length") is None:  # Was chunked: end it by closing.
          self.send_header("Connection", "close")
          self.close_connection = True
        self.end_headers()
        try:
          while chunk := response.read(16384):
            self.wfile.write(chunk)
            entry[3] += len(chunk)
        except (ConnectionResetError, BrokenPipeError):
          self.close_connection = True
        finally:
          conn.close()

      do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _forward

      def log_message(self, *args):
        del args

    class Server(http.server.ThreadingHTTPServer):
      daemon_threads = True

      def handle_error(self, request, client_address):
        del request, client_address  # A client that hangs up early is not an error here.

    self._server = Server(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
    threading.Thread(target=self._server.serve_forever, daemon=True).start()

  def fetched(self, name_filter=lambda name: True) -> dict[str, int]:
    """{object name: bytes received} over the GETs of objects passing `name_filter`."""
    out: dict[str, int] = {}
    for method, name, _, size in list(self.requests):
      if method == "GET" and name and name_filter(name):
        out[name] = out.get(name, 0) + size
    return out

  def close(self) -> None:
    self._server.shutdown()
    self._server.server_close()
