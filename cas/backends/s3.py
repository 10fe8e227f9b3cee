"""An S3 bucket prefix through botocore (boto3's client): ranged reads retried when cut off, create-only
puts, multipart for big packs.

botocore is imported here only, so only an s3:// store pays for it. Messages name the bucket and key but
never credentials or signed URLs.
"""

from __future__ import annotations

import os
import time
import urllib.parse
from collections.abc import Iterable, Iterator

from ..collector import long_lived
from ..errors import InvalidInput, NotFound, StorageError
from .base import Backend

READ_ATTEMPTS = 5
MULTIPART_THRESHOLD = 64 << 20
PART_SIZE = 16 << 20
DELETE_BATCH = 1000
_PRECONDITION_FAILED = {"PreconditionFailed", "412"}
_CONDITIONAL_CONFLICT = {"ConditionalRequestConflict", "409"}
_NOT_IMPLEMENTED = {"NotImplemented", "501"}
_NO_KEY = {"NoSuchKey", "404", "NotFound"}


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, prefix ending in '/' or empty) of s3://bucket[/prefix]."""
    rest = uri[len("s3://"):] if uri.startswith("s3://") else ""
    bucket, _, prefix = rest.partition("/")
    if not bucket or not all(c.isalnum() or c in "-._" for c in bucket) or len(bucket) > 63:
        # not repeated: a bad bucket name may be credentials pasted into the URI
        raise InvalidInput("malformed S3 URI (use s3://bucket/prefix; a bucket name has up to 63 letters, digits, "
                           "'-', '.' or '_')", subject="s3://")
    if prefix.startswith("/") or "//" in prefix:
        raise InvalidInput(f"malformed S3 URI (empty path segment): {uri!r}", subject=uri)
    prefix = prefix.rstrip("/")
    return bucket, (prefix + "/" if prefix else "")


SETTINGS = {  # URL query key → environment variable; the query wins over the environment
    "sse": "CAS_S3_SSE", "kms_key_id": "CAS_S3_SSE_KMS_KEY_ID", "connect_timeout": "CAS_S3_CONNECT_TIMEOUT",
    "read_timeout": "CAS_S3_READ_TIMEOUT", "jobs": "CAS_S3_JOBS"}
SSE_MODES = ("AES256", "aws:kms")


def s3_settings(uri: str) -> tuple[str, dict]:
    """(the URI without its query, the settings): server-side encryption (sse=AES256|aws:kms, kms_key_id),
    connect and read timeouts in seconds, and jobs (parallel transfers), from the URI's query
    (s3://bucket/prefix?sse=aws:kms&jobs=8) or else the CAS_S3_* environment variables. A bad one is
    InvalidInput naming it."""
    base, _, query = uri.partition("?")
    try:
        given = dict(urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise InvalidInput("malformed S3 URI query (use ?sse=AES256&jobs=8)", subject="s3://") from None
    unknown = sorted(set(given) - set(SETTINGS))
    if unknown:
        raise InvalidInput(f"unknown S3 setting {unknown[0]!r} in the store URI (known: {', '.join(SETTINGS)})",
                           subject=unknown[0])
    raw = {key: given.get(key, os.environ.get(env, "")) for key, env in SETTINGS.items()}
    out: dict = {"sse": raw["sse"] or None, "kms_key_id": raw["kms_key_id"] or None}
    if out["sse"] is not None and out["sse"] not in SSE_MODES:
        raise InvalidInput(f"bad server-side encryption {out['sse']!r} (CAS_S3_SSE or ?sse=: AES256 or aws:kms)",
                           subject="sse")
    if out["kms_key_id"] is not None and out["sse"] != "aws:kms":
        raise InvalidInput("a KMS key id needs sse=aws:kms (CAS_S3_SSE)", subject="kms_key_id")
    for key, default, low, high in (("connect_timeout", 10.0, 0.1, 3600), ("read_timeout", 60.0, 0.1, 3600),
                                    ("jobs", 4, 1, 64)):
        text = raw[key]
        try:
            value = (int(text) if key == "jobs" else float(text)) if text else default
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise InvalidInput(f"bad S3 setting {key}={text!r} ({SETTINGS[key]} or ?{key}=: a number from {low} to "
                               f"{high})", subject=key)
        out[key] = value
    return base, out


def endpoint_from_env() -> str | None:
    """AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, checked so that a typo is one line (never repeated: it may
    hold a user and password)."""
    name = next((n for n in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL") if os.environ.get(n)), None)
    if name is None:
        return None
    value = os.environ[name]
    try:
        url = urllib.parse.urlsplit(value)
        ok = url.scheme in ("http", "https") and bool(url.hostname) and url.port != 0 and not url.username
    except ValueError:  # an unclosed [IPv6 address, a port that is no number or out of range
        ok = False
    if not ok:
        raise InvalidInput(f"malformed {name} (use http://host:port or https://host, without user or password)",
                           subject=name)
    return value


def _code(exc) -> str:
    err = getattr(exc, "response", {}).get("Error", {})
    return str(err.get("Code") or getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


class _ServicesWithModel:
    """The services that have a kind of model, as botocore's loader answers it, but asked whether one
    service is among them it looks in that service's folder alone; the whole list is made only for a
    caller that walks it (botocore's error message naming the known services)."""

    def __init__(self, search_paths, type_name: str, everything):
        self.search_paths, self.type_name, self.everything = search_paths, type_name, everything

    def __contains__(self, service) -> bool:
        for path in self.search_paths:
            folder = os.path.join(path, str(service))
            try:
                versions = os.listdir(folder)
            except OSError:
                continue
            if any(os.path.isfile(os.path.join(folder, version, self.type_name + ext))
                   for version in versions for ext in (".json", ".json.gz")):
                return True
        return False

    def __iter__(self):
        return iter(self.everything())

    def __len__(self) -> int:
        return len(self.everything())


def _s3_model_loader(session):
    """botocore's loader of its model files, from the same folders, with two shortcuts that each took
    about 10 ms or more of every client built:

    - asked whether a service has a kind of model, it looks in that service's folder only (botocore's
      own answer lists every service's folder, about 1,800 file system calls). Services other than S3
      are asked for too: the credentials of a role, a web identity or SSO come from an STS or SSO
      client built by the same session;
    - a model file is read into plain dicts, which keep its order as the OrderedDict botocore builds
      for every object of it does (endpoints.json alone is 1.2 MB)."""
    import functools

    import botocore.loaders

    class PlainJSONFiles(botocore.loaders.JSONFileLoader):
        def load_file(self, file_path):
            import gzip
            import json
            for ext, opener in ((".json", open), (".json.gz", gzip.open)):  # botocore's order
                if os.path.isfile(file_path + ext):
                    with opener(file_path + ext, "rb") as f:
                        return json.loads(f.read().decode("utf-8"))
            return None

    class S3ModelLoader(botocore.loaders.Loader):
        FILE_LOADER_CLASS = PlainJSONFiles

        def list_available_services(self, type_name):
            everything = functools.partial(botocore.loaders.Loader.list_available_services, self, type_name)
            return _ServicesWithModel(self.search_paths, type_name, everything)

    data_path = session.get_config_variable("data_path")  # AWS_DATA_PATH, as botocore.loaders.create_loader reads it
    if data_path is None:
        return S3ModelLoader()
    return S3ModelLoader(extra_search_paths=[os.path.expanduser(os.path.expandvars(path))
                                             for path in data_path.split(os.pathsep)])


class S3Backend(Backend):
    cached_reads = True
    upload_concurrency = 4
    read_concurrency = 8
    list_page_size: int | None = None  # keys a listing asks for a page (None: the server's, 1,000 on S3)

    def __init__(self, uri: str):
        uri, self.settings = s3_settings(uri)
        self.uri = uri
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.upload_concurrency, self.read_concurrency = self.settings["jobs"], 2 * self.settings["jobs"]
        self._sse = {"ServerSideEncryption": self.settings["sse"]} if self.settings["sse"] else {}
        if self.settings["kms_key_id"]:
            self._sse["SSEKMSKeyId"] = self.settings["kms_key_id"]
        with long_lived():  # botocore's modules and client: tens of thousands of objects, none in a cycle
            self._bex, self.client = self._client(uri)
        self.conditional_writes: bool | None = None  # None: not probed; try If-None-Match and learn
        # a body cut off or stalled mid-read is not retried by botocore (which retries the request
        # itself, connection errors included); get() retries these, and only these, itself
        bex = self._bex
        self._body_cut_off = (bex.IncompleteReadError, bex.ResponseStreamingError, bex.ReadTimeoutError)

    def _client(self, uri: str):
        """(botocore.exceptions, an S3 client for these settings)."""
        try:  # botocore, which boto3 is built on, alone: boto3's own modules took 0.04-0.06 s to import
            import botocore.config
            import botocore.exceptions as bex
            import botocore.session
        except ImportError:
            raise InvalidInput("S3 stores need boto3: pip install 'cas[s3]'", subject=uri) from None
        endpoint = endpoint_from_env()
        config = botocore.config.Config(
            signature_version="s3v4",
            retries={"mode": "standard", "total_max_attempts": 5},
            s3={"addressing_style": "path" if endpoint else "auto"},
            max_pool_connections=max(16, 2 * self.settings["jobs"]),
            connect_timeout=self.settings["connect_timeout"],
            read_timeout=self.settings["read_timeout"],
        )
        try:
            session = botocore.session.get_session()
            session.register_component("data_loader", _s3_model_loader(session))
            return bex, session.create_client("s3", endpoint_url=endpoint, config=config)
        except bex.BotoCoreError as exc:
            raise StorageError(f"cannot set up the S3 client: {exc}", subject=uri) from None
        except ValueError:  # an endpoint from a config file that botocore cannot parse (it may hold a secret)
            raise InvalidInput("cannot set up the S3 client: malformed endpoint URL", subject=uri) from None

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _fail(self, exc, what: str) -> Exception:
        """One clear line for a failed S3 call; NotFound for a missing bucket."""
        if isinstance(exc, self._bex.ClientError):
            code = _code(exc)
            if code == "NoSuchBucket":
                return NotFound(f"no such S3 bucket: {self.bucket}", subject=self.bucket)
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return StorageError(f"S3 refused {what} in bucket {self.bucket}: {code} (check credentials)",
                                    subject=self.bucket)
            message = exc.response.get("Error", {}).get("Message") or ""
            return StorageError(f"S3 error while {what}: {code} {message}".rstrip(), subject=self.bucket)
        if isinstance(exc, self._bex.NoCredentialsError):
            return StorageError("no S3 credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)",
                                subject=self.bucket)
        if isinstance(exc, self._bex.EndpointConnectionError):
            return StorageError(f"cannot reach the S3 endpoint while {what}", subject=self.bucket)
        return StorageError(f"S3 failure while {what}: {type(exc).__name__}", subject=self.bucket)

    # ---- reads ------------------------------------------------------------------------------
    def get(self, key, start=0, end=None):
        if end is not None and end <= start:
            return b""
        kwargs = {"Bucket": self.bucket, "Key": self._key(key)}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        delay = 0.05
        for attempt in range(READ_ATTEMPTS):
            try:
                resp = self.client.get_object(**kwargs)  # botocore retries the request itself
            except self._bex.ClientError as exc:
                code = _code(exc)
                if code in _NO_KEY:
                    raise NotFound(f"object not found: {key}", subject=key) from None
                if code in ("InvalidRange", "416"):
                    return b""
                raise self._fail(exc, f"reading {key}") from None
            except self._bex.BotoCoreError as exc:
                raise self._fail(exc, f"reading {key}") from None
            body = resp["Body"]
            try:
                data = body.read()
                if len(data) != resp.get("ContentLength", len(data)):
                    raise self._bex.IncompleteReadError(actual_bytes=len(data), expected_bytes=resp["ContentLength"])
                return data
            except self._body_cut_off as exc:
                if attempt == READ_ATTEMPTS - 1:
                    raise self._fail(exc, f"reading {key}") from None
            except self._bex.BotoCoreError as exc:
                raise self._fail(exc, f"reading {key}") from None
            finally:
                body.close()
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def stat(self, key):
        head = self._head(key)
        return None if head is None else int(head["ContentLength"])

    def object_identity(self, key: str) -> dict | None:
        """What identifies an object now (size, ETag, version id: None if the bucket keeps no versions),
        or None if there is none; for references to data kept outside the store."""
        head = self._head(key)
        if head is None:
            return None
        return {"size": int(head["ContentLength"]), "etag": head.get("ETag"), "version_id": head.get("VersionId")}

    def _head(self, key: str) -> dict | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except self._bex.ClientError as exc:
            if _code(exc) in _NO_KEY:
                return None
            raise self._fail(exc, f"reading {key}") from None
        except self._bex.BotoCoreError as exc:
            raise self._fail(exc, f"reading {key}") from None

    def list(self, prefix) -> Iterator[tuple[str, int]]:
        for key, obj in self._objects(prefix):
            yield key, int(obj["Size"])

    def list_times(self, prefix) -> Iterator[tuple[str, float]]:
        for key, obj in self._objects(prefix):
            yield key, obj["LastModified"].timestamp()  # the server's clock

    def _objects(self, prefix: str):
        skip = len(self.prefix)
        try:
            for page in self._pages(prefix):
                for obj in page.get("Contents", ()):
                    key = obj["Key"][skip:]
                    if not key.startswith("tmp/"):
                        yield key, obj
        except (self._bex.ClientError, self._bex.BotoCoreError) as exc:
            raise self._fail(exc, f"listing {prefix or 'the store'}") from None

    def _pages(self, prefix: str):
        """The pages of a listing, followed by their continuation tokens here: botocore's paginator
        loads every service's paginator model to build itself (thousands of file system calls, about
        10 ms of each command's first listing). A page that says there is more but gives no new
        token is an error, never a listing silently cut short."""
        kwargs: dict[str, str | int] = {"Bucket": self.bucket, "Prefix": self._key(prefix)}
        if self.list_page_size:
            kwargs["MaxKeys"] = self.list_page_size
        while True:
            page = self.client.list_objects_v2(**kwargs)
            yield page
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
            if not token or token == kwargs.get("ContinuationToken"):
                raise StorageError(f"the S3 server cut short a listing of {prefix or 'the store'} "
                                   "(more to come, but no way to ask for it)", subject=self.bucket)
            kwargs["ContinuationToken"] = token

    # ---- writes -----------------------------------------------------------------------------
    def put(self, key, data, *, create_only=False):
        return self._create(key, create_only, lambda extra: self.client.put_object(
            Bucket=self.bucket, Key=self._key(key), Body=data, **self._sse, **extra))

    def put_file(self, key, path, *, create_only=False):
        size = os.path.getsize(path)
        if size > MULTIPART_THRESHOLD:
            return self._create(key, create_only, lambda extra: self._multipart(key, path, extra))

        def put(extra):
            with open(path, "rb") as f:
                return self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=f, **self._sse, **extra)
        return self._create(key, create_only, put)

    def _create(self, key: str, create_only: bool, send) -> bool:
        """Run send(extra args); with create_only, If-None-Match: * where supported, else a check first."""
        for _ in range(3):
            extra = {}
            if create_only:
                if self.conditional_writes is False:
                    if self.stat(key) is not None:
                        return False
                else:
                    extra["IfNoneMatch"] = "*"
            try:
                send(extra)
                return True
            except self._bex.ClientError as exc:
                code = _code(exc)
                if create_only and code in _PRECONDITION_FAILED:
                    return False
                if create_only and code in _CONDITIONAL_CONFLICT:
                    continue  # a racing conditional write is in flight; ask again
                if create_only and code in _NOT_IMPLEMENTED and self.conditional_writes is None:
                    self.conditional_writes = False
                    continue
                raise self._fail(exc, f"writing {key}") from None
            except (self._bex.BotoCoreError, OSError) as exc:
                raise self._fail(exc, f"writing {key}") from None
        raise StorageError(f"S3 kept reporting a conflicting write of {key}", subject=key)

    def _multipart(self, key: str, path: str, extra: dict) -> None:
        """Upload a big file in parts; abort the upload on any failure (stale uploads are gc's to clean)."""
        full = self._key(key)
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=full, **self._sse)["UploadId"]
        try:
            parts = []
            with open(path, "rb") as f:
                number = 1
                while data := f.read(PART_SIZE):
                    resp = self.client.upload_part(Bucket=self.bucket, Key=full, UploadId=upload,
                                                   PartNumber=number, Body=data)
                    parts.append({"PartNumber": number, "ETag": resp["ETag"]})
                    number += 1
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload,
                                                  MultipartUpload={"Parts": parts}, **extra)
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload)
            except Exception:
                pass  # left for gc, which aborts stale uploads
            raise

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for i in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": self._key(k)} for k in keys[i:i + DELETE_BATCH]]
            try:
                resp = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except (self._bex.ClientError, self._bex.BotoCoreError) as exc:
                raise self._fail(exc, "deleting objects") from None
            errors = [e for e in resp.get("Errors", ()) if e.get("Code") not in _NO_KEY]
            if errors:
                raise StorageError(f"S3 could not delete {len(errors)} objects, e.g. "
                                   f"{errors[0].get('Key', '')[len(self.prefix):]}: {errors[0].get('Code')}",
                                   subject=self.bucket)

    def abort_stale_uploads(self, older_than: float, *, dry_run: bool = False) -> int:
        """Abort multipart uploads under the store's prefix begun more than older_than seconds ago."""
        import datetime
        cutoff = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=older_than)
        stale = []
        try:
            for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                                     Prefix=self.prefix):
                stale += [u for u in page.get("Uploads", ()) if u["Initiated"] < cutoff]
            if not dry_run:
                for u in stale:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"])
        except (self._bex.ClientError, self._bex.BotoCoreError) as exc:
            raise self._fail(exc, "cleaning up unfinished uploads") from None
        return len(stale)

    def create_location(self) -> None:
        """Create the bucket if it does not exist (the first write to a store creates it)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except self._bex.ClientError as exc:
            if _code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise self._fail(exc, "checking the bucket") from None
        except self._bex.BotoCoreError as exc:
            raise self._fail(exc, "checking the bucket") from None
        region = self.client.meta.region_name
        extra = ({"CreateBucketConfiguration": {"LocationConstraint": region}}
                 if region not in (None, "us-east-1") else {})
        try:
            self.client.create_bucket(Bucket=self.bucket, **extra)
        except self._bex.ClientError as exc:
            if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._fail(exc, f"creating bucket {self.bucket}") from None
        except self._bex.BotoCoreError as exc:
            raise self._fail(exc, f"creating bucket {self.bucket}") from None

    def probe_conditional_writes(self) -> bool:
        """Whether the server honours If-None-Match: * (a second create of one key must fail)."""
        import secrets
        key = f"tmp/probe-{secrets.token_hex(8)}"
        self.conditional_writes = None
        try:
            first = self.put(key, b"probe", create_only=True)
            second = self.put(key, b"probe", create_only=True)
            self.conditional_writes = bool(first and not second and self.conditional_writes is not False)
        finally:
            self.delete([key])
        return self.conditional_writes

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass
