"""Objects in S3-compatible storage (AWS S3, MinIO, Ceph RGW, SeaweedFS, ...): `s3://bucket/prefix`
URLs, one boto3 client per process, bounded retries, and every failure said in one line.

boto3 is AWS's own SDK: it reads the endpoint, region and credentials the way every other AWS tool
and DALI do (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_PROFILE`, `AWS_ACCESS_KEY_ID`, ~/.aws/config
and credentials, instance roles), so nothing secret ever passes through a config. With an endpoint
set (a non-AWS server) requests use path-style addressing, which every S3-compatible server answers.

Fork safety: a client holds a pool of open connections, and a forked loader worker that used its
parent's would share sockets with it (s3fs hangs that way: fsspec #755). `client()` is keyed by
process id, so each process makes its own after the fork.

Errors: what the user must fix (no such bucket or prefix, wrong credentials, an endpoint that does
not answer at start) is a DataError (exit 2, not requeued); a server that stops answering during a
run is retried with backoff (`RETRIES_ENV` attempts), then a RemoteUnavailable (exit 1: a rerun or
a Slurm requeue resumes from the last checkpoint once the server is back).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.types import DataError, RemoteUnavailable

SCHEME = "s3://"
RETRIES_ENV = "PIPELINE_S3_RETRIES"  # attempts per request; in the environment so spawned workers see it
DEFAULT_RETRIES = 5
BACKOFF_S = (0.5, 8.0)  # first wait and the cap; doubles each attempt
CHUNK = 8 << 20  # download buffer


def is_remote(path: str | os.PathLike) -> bool:
    return str(path).startswith(SCHEME)


@dataclass(frozen=True)
class ObjectUrl:
    bucket: str
    key: str  # no leading slash; "" for the bucket's root

    @classmethod
    def parse(cls, url: str) -> "ObjectUrl":
        if not is_remote(url):
            raise DataError(f"not an s3:// URL: {url}")
        bucket, _, key = url[len(SCHEME):].partition("/")
        if not bucket:
            raise DataError(f"no bucket in {url} (expected s3://bucket/prefix)")
        return cls(bucket, key.strip("/") if key.endswith("/") else key)

    def child(self, name: str) -> "ObjectUrl":
        return ObjectUrl(self.bucket, f"{self.key}/{name}" if self.key else name)

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"


_clients: dict[tuple, object] = {}  # by (process, endpoint, key id, profile)


def endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"


def client():
    """This process's boto3 S3 client (a new one after a fork). Retries are ours, not botocore's,
    so that a dead server costs a bounded, stated time."""
    pid = (os.getpid(), endpoint(), os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"))
    if pid not in _clients:
        import boto3
        from botocore.config import Config

        custom = endpoint() != "AWS S3"
        config = Config(s3={"addressing_style": "path" if custom else "auto"}, retries={"max_attempts": 1},
                        connect_timeout=5, read_timeout=30, max_pool_connections=16)
        _clients.clear()  # a parent's client is never used in a child
        _clients[pid] = boto3.session.Session().client("s3", config=config)
    return _clients[pid]


def retries() -> int:
    return max(1, int(os.environ.get(RETRIES_ENV) or DEFAULT_RETRIES))


# -- errors --------------------------------------------------------------------------------------

_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
                     "ExpiredToken", "AuthorizationHeaderMalformed", "403"}


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _unreachable(exc: Exception) -> bool:
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError, ReadTimeoutError

    return isinstance(exc, (BotoConnectionError, HTTPClientError, ReadTimeoutError, ConnectionError, TimeoutError))


def user_error(exc: Exception, url: ObjectUrl) -> DataError | None:
    """The one-line DataError for a failure the user must fix, or None for one worth retrying."""
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError

    code = _code(exc)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return DataError(f"no S3 credentials for {url} (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                         f"or AWS_PROFILE)")
    if code in _CREDENTIAL_CODES:
        return DataError(f"S3 refused the credentials for {url} at {endpoint()} ({code}): check "
                         f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE")
    if code in ("NoSuchBucket", "InvalidBucketName"):
        return DataError(f"bucket not found: {url.bucket} at {endpoint()} ({code})")
    if code in ("NoSuchKey", "404"):
        return DataError(f"object not found: {url}")
    return None


def _is_server_side(exc: Exception) -> bool:
    code = _code(exc)
    return _unreachable(exc) or code.startswith("5") or code in ("SlowDown", "InternalError", "ServiceUnavailable",
                                                                   "RequestTimeout", "IncompleteRead")


def call(what: str, url: ObjectUrl, fn, *, attempts: int | None = None):
    """fn() with bounded retries and backoff on server-side failures; a user error at once."""
    attempts = attempts or retries()
    wait = BACKOFF_S[0]
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            if (err := user_error(exc, url)) is not None:
                raise err from None
            if not _is_server_side(exc) and not _is_truncation(exc):
                raise
            if attempt == attempts:
                raise RemoteUnavailable(f"S3 {what} {url} failed {attempts} times at {endpoint()}: "
                                        f"{type(exc).__name__}: {str(exc)[:160]}") from None
            time.sleep(wait)
            wait = min(wait * 2, BACKOFF_S[1])
    raise AssertionError("unreachable")


def _is_truncation(exc: Exception) -> bool:
    from botocore.exceptions import IncompleteReadError, ResponseStreamingError

    return isinstance(exc, (IncompleteReadError, ResponseStreamingError, _ShortBody))


class _ShortBody(OSError):
    """A body that ended before its Content-Length: the connection dropped (retried)."""


# -- operations ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


def check_reachable(url: ObjectUrl) -> None:
    """At start: the endpoint answers, the credentials are accepted, the bucket exists. One line and
    exit 2 otherwise (a short try: a dead endpoint at start is a configuration problem)."""
    try:
        call("listing", url, lambda: client().list_objects_v2(Bucket=url.bucket, Prefix=url.key, MaxKeys=1),
             attempts=2)
    except RemoteUnavailable:
        raise DataError(f"S3 endpoint {endpoint()} does not answer (for {url}; AWS_ENDPOINT_URL)") from None


def list_objects(url: ObjectUrl, suffix: str = "") -> list[ObjectInfo]:
    """Every object under the prefix url.key + "/", sorted by key."""
    prefix = f"{url.key}/" if url.key else ""
    out: list[ObjectInfo] = []
    token = None
    while True:
        kwargs = {"Bucket": url.bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
        page = call("listing", url, lambda: client().list_objects_v2(**kwargs))
        out += [ObjectInfo(o["Key"], int(o["Size"]), o.get("ETag", "").strip('"'))
                for o in page.get("Contents", []) if o["Key"].endswith(suffix)]
        if not page.get("IsTruncated"):
            return sorted(out, key=lambda o: o.key)
        token = page["NextContinuationToken"]


def read_object(url: ObjectUrl) -> bytes:
    return call("read of", url, lambda: client().get_object(Bucket=url.bucket, Key=url.key)["Body"].read())


def download(url: ObjectUrl, dest: Path, size: int) -> None:
    """The whole object into dest (created or overwritten), checked against its listed size."""
    def get() -> None:
        response = client().get_object(Bucket=url.bucket, Key=url.key)
        got = 0
        with open(dest, "r+b" if dest.exists() else "wb") as fh:
            for chunk in response["Body"].iter_chunks(CHUNK):
                fh.write(chunk)
                got += len(chunk)
            fh.truncate(got)
        if got != size:
            raise _ShortBody(f"got {got} of {size} bytes")

    call("download of", url, get)


def head(url: ObjectUrl) -> dict | None:
    """The object's size and our recorded sha256 (None when absent)."""
    from botocore.exceptions import ClientError

    def ask():
        try:
            answer = client().head_object(Bucket=url.bucket, Key=url.key)
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return {"size": int(answer["ContentLength"]), "sha256": answer.get("Metadata", {}).get("sha256", "")}

    return call("HEAD of", url, ask)


def upload(path: Path, url: ObjectUrl, sha256: str) -> None:
    """A file to url, its sha256 kept in the object's metadata (multipart ETags are not MD5s, so a
    rerun compares this instead)."""
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20, use_threads=True)
    call("upload to", url, lambda: client().upload_file(str(path), url.bucket, url.key, Config=config,
                                                       ExtraArgs={"Metadata": {"sha256": sha256}}))


def ensure_bucket(url: ObjectUrl) -> None:
    """For `prepare --out s3://`: the bucket must exist (created only where the server lets us)."""
    from botocore.exceptions import ClientError

    try:
        client().head_bucket(Bucket=url.bucket)
        return
    except ClientError as exc:
        if _code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            if (err := user_error(exc, url)) is not None:
                raise err from None
            raise
    except Exception as exc:  # noqa: BLE001
        if _unreachable(exc):
            raise DataError(f"S3 endpoint {endpoint()} does not answer (for {url}; AWS_ENDPOINT_URL)") from None
        raise
    call("bucket creation", url, lambda: client().create_bucket(Bucket=url.bucket))
