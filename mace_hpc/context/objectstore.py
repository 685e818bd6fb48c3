"""Context archives in an object store speaking the S3 API (AWS S3, Ceph RGW, MinIO, ...).

The one module that talks to the store; `context/archive_store.py` is the interface every caller
uses (a directory or an `s3://bucket/prefix` look the same there). boto3 is the client: its
managed transfer uploads large files in parts and aborts the multipart upload when a part fails,
and object metadata and conditional writes are plain request parameters. It is imported only
when an `s3://` archive_dir is used (the `[s3]` extra), so sites without one never need it.

Layout under `s3://bucket/prefix/`: `<workflow_id>.tar.gz` (metadata `sha256`, `size`,
`workflow-id`, `plan`) and `manifests/<plan>.json`, one small manifest object per plan
(element, workflow id, key, size, sha256, time), updated with conditional writes so concurrent
epilogues of one array never drop each other's entries. Finding or restoring one element reads
its key (and its plan's manifest) directly: nothing here lists the bucket.

Credentials come only the standard way: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_SESSION_TOKEN, AWS_PROFILE or `archive_profile`, instance roles; endpoint and region from
`archive_endpoint_url` / `archive_region` or AWS_ENDPOINT_URL / AWS_DEFAULT_REGION. Messages
name the endpoint (without any user:password part) and the error code, never a key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

from ..config import S3_SCHEME, Config, is_object_store_url, load_config
from ..errors import ConfigError, InputError, StorageError, StorageUnavailable
from ..util.ids import validate_workflow_id

MANIFEST_PREFIX = "manifests"
MANIFEST_VERSION = 1
_MANIFEST_LIMIT = 16 << 20
_CHUNK = 1 << 20
MIB = 1 << 20
# codes meaning "the request was fine, the store is not there or not well": retry later (exit 3)
_UNAVAILABLE_CODES = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown",
                      "RequestTimeout", "RequestTimeTooSkewed"}
_AUTH_CODES = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
               "InvalidToken", "TokenRefreshRequired", "AuthorizationHeaderMalformed", "InvalidSecurity"}
_PRECONDITION_CODES = {"412", "PreconditionFailed", "409", "ConditionalRequestConflict"}


@dataclass(frozen=True)
class S3Url:
    """`s3://bucket/prefix` split; keys are built under the prefix."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Url:
        if not is_object_store_url(url):
            raise InputError(f"{url!r} is not an s3://bucket/prefix URL")
        bucket, _, prefix = url[len(S3_SCHEME):].partition("/")
        if not bucket:
            raise InputError(f"{url!r}: no bucket; use s3://bucket/prefix")
        return cls(bucket, prefix.strip("/"))

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def url(self, key: str | None = None) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.prefix if key is None else key}"

    def archive_key(self, workflow_id: str) -> str:
        return self.key(f"{validate_workflow_id(workflow_id)}.tar.gz")

    def manifest_key(self, plan: str) -> str:
        return self.key(f"{MANIFEST_PREFIX}/{validate_workflow_id(plan, 'plan')}.json")


@dataclass(frozen=True)
class Settings:
    """Where the store is and which profile reaches it (never the keys themselves)."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    part_size: int = 64 * MIB

    @classmethod
    def from_config(cls, cfg: Config | None = None) -> Settings:
        cfg = cfg or load_config()
        return cls(cfg.get("archive_endpoint_url"), cfg.get("archive_region"), cfg.get("archive_profile"),
                   int(cfg.get("archive_part_size") or 64) * MIB)


def shown_endpoint(url: str | None) -> str:
    """The endpoint for messages: scheme, host and port only (a user:password@ part is dropped)."""
    if not url:
        return "the default AWS endpoint"
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# clients are built once per process, settings and AWS environment (building one costs ~20-40 ms,
# once per context in a `mace merge` of thousands); keyed by a digest so no key is kept in clear twice
_CLIENTS: dict[tuple[int, Settings, str], Any] = {}
_AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
            "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE")


def _client(settings: Settings) -> Any:
    env = hashlib.sha256(repr([os.environ.get(k) for k in _AWS_ENV]).encode()).hexdigest()
    key = (os.getpid(), settings, env)  # a forked epilogue builds its own: clients are not fork-safe
    if key not in _CLIENTS:
        _CLIENTS.clear()
        _CLIENTS[key] = _new_client(settings)
    return _CLIENTS[key]


def _new_client(settings: Settings) -> Any:
    try:
        import boto3  # lazy: optional [s3] extra, needed only for an s3:// archive_dir
        from botocore.config import Config as BotoConfig  # lazy: with boto3
        from botocore.exceptions import BotoCoreError  # lazy: with boto3
    except ModuleNotFoundError:
        raise ConfigError(
            "archive_dir is an s3:// URL but boto3 is not installed; pip install 'mace-hpc[s3]'"
        ) from None
    try:
        session = boto3.session.Session(profile_name=settings.profile) if settings.profile else boto3.session.Session()
        return session.client(
            "s3", endpoint_url=settings.endpoint_url or None, region_name=settings.region or None,
            config=BotoConfig(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"}),
        )
    except BotoCoreError as exc:  # unknown profile, malformed endpoint
        raise StorageError(f"object store client: {type(exc).__name__}: {exc}") from None


class ObjectStore:
    """One bucket of an S3-API store; every failure becomes one StorageError line."""

    def __init__(self, url: str, settings: Settings | None = None) -> None:
        self.where = S3Url.parse(url)
        self.settings = settings or Settings.from_config()
        self._s3: Any = None
        self._bucket_ok = False  # HEAD bucket answered: a later 404 means the key, not the bucket

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = _client(self.settings)
        return self._s3

    # ------------------------------------------------------------------ errors
    def _fail(self, exc: BaseException, what: str) -> StorageError:
        """The one line for a failed request; 404/NoSuchBucket, auth and unreachable told apart."""
        from botocore import exceptions as be  # lazy: optional [s3] extra

        bucket = self.where.bucket
        endpoint = shown_endpoint(self.settings.endpoint_url or getattr(self._s3, "meta", None) and self._s3.meta.endpoint_url)
        if isinstance(exc, be.NoCredentialsError | be.PartialCredentialsError):
            return StorageError(f"{what}: no credentials for the object store; set AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or archive_profile")
        if isinstance(exc, be.ProfileNotFound):
            return StorageError(f"{what}: AWS profile not found ({exc}); fix archive_profile / AWS_PROFILE")
        if isinstance(exc, be.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?"))
            if code in ("NoSuchBucket",):
                return StorageError(f"{what}: bucket {bucket!r} does not exist at {endpoint}; create it or fix archive_dir")
            if code in _AUTH_CODES:
                return StorageError(f"{what}: the object store at {endpoint} refused the credentials ({code}); "
                                    "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile")
            if code in _UNAVAILABLE_CODES:
                return StorageUnavailable(f"{what}: the object store at {endpoint} is not answering ({code}); retry later")
            return StorageError(f"{what}: the object store at {endpoint} refused it ({code}: {err.get('Message', '')})")
        if isinstance(exc, be.BotoCoreError | ConnectionError | TimeoutError):
            reason = type(exc).__name__
            return StorageUnavailable(f"{what}: cannot reach the object store at {endpoint} ({reason}); retry later")
        return StorageError(f"{what}: {type(exc).__name__}: {exc}")

    def _call(self, what: str, fn: Any, **kw: Any) -> Any:
        from boto3.exceptions import Boto3Error  # lazy: optional [s3] extra
        from botocore.exceptions import BotoCoreError, ClientError  # lazy: optional [s3] extra

        try:
            return fn(**kw)
        except Boto3Error as exc:  # S3UploadFailedError wraps the ClientError that says why
            inner = exc.__cause__ or exc.__context__
            raise self._fail(inner if isinstance(inner, ClientError | BotoCoreError) else exc, what) from None
        except (BotoCoreError, ClientError, ConnectionError, TimeoutError) as exc:
            raise self._fail(exc, what) from None

    # ------------------------------------------------------------------ requests
    def check_bucket(self) -> None:
        """Fail early (before an archive is built) when the bucket is missing or refuses us."""
        from botocore.exceptions import ClientError  # lazy: optional [s3] extra

        client = self.s3  # outside the try: a missing boto3 is its own one line
        try:
            client.head_bucket(Bucket=self.where.bucket)
            self._bucket_ok = True
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise self._fail(_client_error("NoSuchBucket"), f"s3://{self.where.bucket}") from None
            raise self._fail(exc, f"s3://{self.where.bucket}") from None
        except Exception as exc:  # noqa: BLE001 - BotoCoreError & co, translated
            raise self._fail(exc, f"s3://{self.where.bucket}") from None

    def head(self, key: str) -> dict[str, Any] | None:
        """The object's head (size, metadata, checksum), or None when there is none."""
        from botocore.exceptions import ClientError  # lazy: optional [s3] extra

        client = self.s3
        try:
            return dict(client.head_object(Bucket=self.where.bucket, Key=key, ChecksumMode="ENABLED"))
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in ("404", "NoSuchKey", "NotFound"):
                if not self._bucket_ok:
                    self.check_bucket()  # a missing bucket also answers 404: say which
                return None
            raise self._fail(exc, self.where.url(key)) from None
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, self.where.url(key)) from None

    def put_archive(self, path: Path, key: str, sha256: str, metadata: dict[str, str]) -> dict[str, Any]:
        """Upload `path` to `key` and check what landed; returns the object's head.

        Large files go in parts (boto3 aborts the multipart upload when a part fails, so no object
        appears under `key`); each request carries a SHA-256 checksum the store verifies. An object
        already there with this size and SHA-256 (an earlier attempt that finished) is kept.
        """
        from boto3.s3.transfer import TransferConfig  # lazy: optional [s3] extra

        url = self.where.url(key)
        size = path.stat().st_size
        part = max(self.settings.part_size, 5 * MIB)
        found = self.head(key)
        if found is not None and _matches(found, size, sha256, whole=size < part):
            return found
        extra = {"Metadata": {**metadata, "sha256": sha256, "size": str(size)}, "ChecksumAlgorithm": "SHA256"}
        self._call(f"uploading {url}", self.s3.upload_file, Filename=str(path), Bucket=self.where.bucket, Key=key,
                   ExtraArgs=extra, Config=TransferConfig(multipart_threshold=part, multipart_chunksize=part))
        landed = self.head(key)
        if landed is None or not _matches(landed, size, sha256, whole=size < part):
            got = "no object" if landed is None else f"{landed.get('ContentLength')} bytes, sha256 " \
                f"{(landed.get('Metadata') or {}).get('sha256', '?')[:12]}"
            if landed is not None:
                self._call(f"removing the bad upload {url}", self.s3.delete_object, Bucket=self.where.bucket, Key=key)
            raise StorageError(f"uploading {url}: the store holds {got}, not {size} bytes sha256 {sha256[:12]}; "
                               "removed, context kept")
        return landed

    def download(self, key: str, out: BinaryIO) -> tuple[str, int, dict[str, str]]:
        """Stream the object into `out`; (its SHA-256 as read, its size, its metadata)."""
        url = self.where.url(key)
        obj = self._get(key)
        if obj is None:
            raise StorageError(f"{url}: no such archive (see the plan's manifest or `mace status`)")
        digest, size = hashlib.sha256(), 0
        try:
            for chunk in obj["Body"].iter_chunks(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        except Exception as exc:  # noqa: BLE001 - connection dropped mid-download
            raise self._fail(exc, f"downloading {url}") from None
        return digest.hexdigest(), size, {k.lower(): v for k, v in (obj.get("Metadata") or {}).items()}

    def _get(self, key: str, **kw: Any) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError  # lazy: optional [s3] extra

        client = self.s3
        try:
            return dict(client.get_object(Bucket=self.where.bucket, Key=key, **kw))
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._fail(exc, self.where.url(key)) from None
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, self.where.url(key)) from None

    # ------------------------------------------------------------------ the plan's manifest
    def read_manifest(self, plan: str) -> tuple[dict[str, Any], str | None]:
        """(the plan's manifest, its ETag); an empty one (ETag None) when there is none yet."""
        key = self.where.manifest_key(plan)
        obj = self._get(key)
        empty = {"version": MANIFEST_VERSION, "plan": plan, "elements": {}}
        if obj is None:
            return empty, None
        try:
            data = json.loads(obj["Body"].read(_MANIFEST_LIMIT + 1)[:_MANIFEST_LIMIT])
            if not isinstance(data, dict) or not isinstance(data.get("elements"), dict):
                raise ValueError("no elements")
        except (ValueError, RecursionError):
            raise StorageError(f"{self.where.url(key)}: unreadable manifest; move it aside to rebuild it") from None
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, self.where.url(key)) from None
        return data, obj.get("ETag")

    def record(self, plan: str, entry: dict[str, Any], attempts: int = 20) -> None:
        """Add/replace one element's entry in the plan's manifest (compare-and-swap on the ETag)."""
        from botocore.exceptions import ClientError  # lazy: optional [s3] extra

        key = self.where.manifest_key(plan)
        client = self.s3
        for attempt in range(attempts):
            data, etag = self.read_manifest(plan)
            data["elements"][entry["workflow_id"]] = entry
            body = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()  # C encoder: no indent
            cond = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            try:
                client.put_object(Bucket=self.where.bucket, Key=key, Body=body, ContentType="application/json", **cond)
                return
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code in _PRECONDITION_CODES:  # another epilogue wrote it first: back off, read again
                    time.sleep(random.uniform(0.01, min(2.0, 0.05 * 2 ** attempt)))
                    continue
                if code in ("NotImplemented", "501"):  # a store without conditional writes
                    self._call(f"writing {self.where.url(key)}", self.s3.put_object, Bucket=self.where.bucket,
                               Key=key, Body=body, ContentType="application/json")
                    return
                raise self._fail(exc, f"writing {self.where.url(key)}") from None
            except Exception as exc:  # noqa: BLE001
                raise self._fail(exc, f"writing {self.where.url(key)}") from None
        # the archive itself is uploaded and verified; the element stays pending and the next
        # `mace merge` (or the backstop, after every element) finds the object and only writes this
        raise StorageUnavailable(f"writing {self.where.url(key)}: still contended after {attempts} attempts; retry later")


def _matches(head: dict[str, Any], size: int, sha256: str, whole: bool) -> bool:
    """The object has this size and carries this SHA-256: in its metadata and, for a single-part
    upload (`whole`), in the checksum the store computed itself from the bytes it received (a
    multipart object's is a checksum of part checksums; each part was verified on arrival)."""
    meta = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
    if int(head.get("ContentLength", -1)) != size or meta.get("sha256") != sha256:
        return False
    stored = head.get("ChecksumSHA256")
    if whole and stored:
        return stored == base64.b64encode(bytes.fromhex(sha256)).decode()
    return True


def _client_error(code: str) -> Exception:
    from botocore.exceptions import ClientError  # lazy: optional [s3] extra

    return ClientError({"Error": {"Code": code, "Message": ""}}, "HeadBucket")
