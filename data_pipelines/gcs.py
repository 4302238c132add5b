"""Cloud Storage endpoint and credentials: checked in seconds, before any client can hang.

Three clients read buckets here, and each finds a Cloud Storage emulator through its own
variable (none is set for real GCS):

  STORAGE_EMULATOR_HOST             gcsfs and the Google Python clients (paths, indices, ranges)
  CLOUD_STORAGE_EMULATOR_ENDPOINT   array-record's own GCS reader (google-cloud-cpp)
  TENSORSTORE_GCS_HTTP_URL          TensorStore, under Orbax (checkpoints)

With one of them missing, that client talks to real GCS instead; with a wrong endpoint or no
credentials, gcsfs retries for half a minute and array-record's reader retries forever (both
measured). `check_reachable` therefore runs before a run, a build or a copy touches a bucket:
the variables must agree, and one request with a short timeout must reach the bucket; any
failure is one `StorageError` line naming the variable or credential to set.
"""

import contextlib
import json
import os
import urllib.error
import urllib.request

from collections.abc import Iterator, Mapping

from data_pipelines import storage

EMULATOR_VARIABLES = ("STORAGE_EMULATOR_HOST", "CLOUD_STORAGE_EMULATOR_ENDPOINT",
                      "TENSORSTORE_GCS_HTTP_URL")
GCS_ENDPOINT = "https://storage.googleapis.com"
_READ_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
_CHECKED: set[str] = set()  # Buckets reached by this process.


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
  """This process's bucket clients use `values` (endpoint variables, credentials) inside the
  block, and what was set before after it. gcsfs instances are dropped on entry and exit,
  because an instance keeps the endpoint it was created with."""
  import fsspec  # pylint: disable=g-import-not-at-top  (only bucket paths need it)
  saved = {k: os.environ.get(k) for k in values}
  os.environ.update(values)
  fsspec.filesystem("gs").clear_instance_cache()
  try:
    yield
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    fsspec.filesystem("gs").clear_instance_cache()


def bucket_of(url: str) -> str:
  return os.fspath(url).split("://", 1)[1].split("/", 1)[0]


def endpoint() -> str:
  """The Cloud Storage endpoint the clients use; raises unless the emulator variables agree."""
  values = {name: os.environ.get(name, "").rstrip("/") for name in EMULATOR_VARIABLES}
  set_ = {name: v for name, v in values.items() if v}
  if not set_:
    return GCS_ENDPOINT
  first = next(iter(set_.values()))
  missing = [name for name, v in values.items() if v != first]
  if missing:
    shown = ", ".join(f"{name}={values[name] or '(unset)'}" for name in EMULATOR_VARIABLES)
    raise storage.StorageError(
      f"Cloud Storage emulator variables disagree ({shown}); set {' and '.join(missing)} to "
      f"{first}, or unset all three for real Cloud Storage.")
  return first if "://" in first else f"http://{first}"


def _auth_header() -> dict[str, str]:
  """A bearer token from the application default credentials (real GCS only)."""
  import google.auth  # pylint: disable=g-import-not-at-top
  import google.auth.exceptions  # pylint: disable=g-import-not-at-top
  import google.auth.transport.requests  # pylint: disable=g-import-not-at-top
  try:
    credentials, _ = google.auth.default(scopes=[_READ_SCOPE])
    credentials.refresh(google.auth.transport.requests.Request())
  except google.auth.exceptions.GoogleAuthError as e:
    raise storage.StorageError(
      f"no usable Google credentials ({' '.join(str(e).split())[:200]}); on a TPU or GCE VM "
      "give it a service account with storage access, elsewhere run `gcloud auth "
      "application-default login` or set GOOGLE_APPLICATION_CREDENTIALS.") from None
  return {"Authorization": f"Bearer {credentials.token}"}


def check_reachable(url: str, timeout: float = 10.0) -> None:
  """Raises `storage.StorageError` in seconds unless the bucket of `url` answers.

  Local paths pass; each bucket is checked once per process.
  """
  if not storage.is_remote(url):
    return
  bucket = bucket_of(url)
  if bucket in _CHECKED:
    return
  base = endpoint()
  headers = _auth_header() if base == GCS_ENDPOINT else {}
  request = urllib.request.Request(f"{base}/storage/v1/b/{bucket}?fields=name", headers=headers)
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      json.loads(response.read() or b"{}")
  except urllib.error.HTTPError as e:
    if e.code == 404:
      raise storage.StorageError(f"{url}: bucket {bucket} does not exist at {base}.") from None
    if e.code in (401, 403):
      raise storage.StorageError(
        f"{url}: the credentials may not read bucket {bucket} (HTTP {e.code}); grant them "
        "storage access or set GOOGLE_APPLICATION_CREDENTIALS to a key that has it.") from None
    raise storage.StorageError(f"{url}: {base} answered HTTP {e.code} for bucket "
                               f"{bucket}.") from None
  except (urllib.error.URLError, OSError) as e:
    reason = getattr(e, "reason", e)
    variable = ("STORAGE_EMULATOR_HOST and the other emulator variables"
                if base != GCS_ENDPOINT else "the network (or STORAGE_EMULATOR_HOST for an "
                "emulator)")
    raise storage.StorageError(f"{url}: cannot reach Cloud Storage at {base} within "
                               f"{timeout:g} s ({reason}); check {variable}.") from None
  _CHECKED.add(bucket)
