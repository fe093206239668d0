"""The few S3 calls the file store makes, signed by botocore, sent by aiohttp.

Why not boto3 or aiobotocore: boto3 blocks the event loop, and aiobotocore pins botocore to one
narrow release range, which would hold back the botocore the Bedrock provider signs with. What the
store needs is small (PUT, ranged GET, DELETE, DeleteObjects, ListObjectsV2 and the multipart
calls: https://docs.aws.amazon.com/AmazonS3/latest/API/API_Operations_Amazon_Simple_Storage_Service.html),
so botocore does what is hard to get right, SigV4 (`S3SigV4Auth`: the payload's sha256 in
`x-amz-content-sha256`, S3's unnormalized path) and the credential chain, and aiohttp, the
transport the workers already use, carries the bytes.

Errors: a missing key is FileNotFoundError; anything else S3 or the network says is
`Unavailable` (503 `file_store_unavailable`), naming S3's error code and never a credential.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from urllib.parse import quote
from xml.etree import ElementTree

import aiohttp
from botocore.auth import S3SigV4Auth  # type: ignore[import-untyped]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from yarl import URL

from broker.aws_credentials import AwsCredentials
from broker.config.batches import S3Store
from broker.errors import Unavailable
from broker.ops import redaction

log = logging.getLogger(__name__)

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def store_error(what: str) -> Unavailable:
    return Unavailable(f"The file store is unavailable: {redaction.redact(what)}", code="file_store_unavailable")


def _find(node: ElementTree.Element, name: str) -> str:
    """A child's text, with or without S3's XML namespace (S3-compatible servers differ)."""
    found = node.find(_NS + name)
    if found is None:
        found = node.find(name)
    return found.text or "" if found is not None else ""


def _children(node: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    return node.findall(_NS + name) or node.findall(name)


class ListedObject:
    __slots__ = ("key", "size", "last_modified")

    def __init__(self, key: str, size: int, last_modified: str) -> None:
        self.key, self.size, self.last_modified = key, size, last_modified


class S3Client:
    def __init__(self, settings: S3Store) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.region = settings.region
        path_style = settings.path_style if settings.path_style is not None else bool(settings.endpoint_url)
        if settings.endpoint_url:
            endpoint = settings.endpoint_url.rstrip("/")
        else:
            endpoint = f"https://s3.{settings.region}.amazonaws.com"
        if path_style:
            self.base = f"{endpoint}/{quote(settings.bucket, safe='')}"
        else:  # https://<bucket>.<host>
            scheme, _, host = endpoint.partition("://")
            self.base = f"{scheme}://{settings.bucket}.{host}"
        self._credentials = AwsCredentials(settings.access_key_id, settings.secret_access_key, settings.session_token,
                                           settings.profile, lambda why: store_error(f"no S3 credentials: {why}"))
        self._session: aiohttp.ClientSession | None = None

    def url(self, key: str = "", query: Mapping[str, str] | None = None) -> str:
        # Keys are percent-encoded once, as S3 expects (SigV4 for S3 signs the path as sent).
        url = f"{self.base}/{quote(key, safe='/-_.~')}"
        if query:
            url += "?" + "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items()))
        return url

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:  # an aiohttp session belongs to its event loop
            # Per read, not per request: a 200 MB download to a slow client may take longer than any total.
            timeout = aiohttp.ClientTimeout(total=None, connect=min(10.0, self.settings.timeout_s),
                                            sock_read=self.settings.timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    # -------------------------------------------------------------- signing

    async def _signed(self, method: str, url: str, body: bytes, headers: Mapping[str, str]) -> dict[str, str]:
        request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
        S3SigV4Auth(await self._credentials.frozen(), "s3", self.region).add_auth(request)
        return {str(k): str(v) for k, v in request.headers.items()}

    # -------------------------------------------------------------- requests

    @asynccontextmanager
    async def request(self, method: str, key: str = "", *, query: Mapping[str, str] | None = None,
                      body: bytes = b"", headers: Mapping[str, str] | None = None,
                      ok: tuple[int, ...] = (200,)) -> AsyncIterator[aiohttp.ClientResponse]:
        """One signed call; yields the response (body unread) when its status is in `ok`."""
        url = self.url(key, query)
        try:
            signed = await self._signed(method, url, body, headers or {})
            # encoded=True: sent exactly as signed (yarl would otherwise re-quote the query's `%2F`).
            async with self._client().request(method, URL(url, encoded=True), data=body or None, headers=signed,
                                              allow_redirects=False) as response:
                if response.status == 404 and 404 not in ok:
                    why = await _describe(response, method)
                    if "NoSuchBucket" in why:  # the config's fault, not a missing file
                        raise store_error(why)
                    raise FileNotFoundError(key)
                if response.status not in ok:
                    raise store_error(await _describe(response, method))
                yield response
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise store_error(f"{method} failed: {type(exc).__name__} {exc}") from None

    async def put_object(self, key: str, body: bytes) -> None:
        async with self.request("PUT", key, body=body):
            pass

    async def get_range(self, key: str, start: int, size: int) -> bytes:
        headers = {"range": f"bytes={start}-{start + size - 1}"}
        async with self.request("GET", key, headers=headers, ok=(200, 206, 416)) as response:
            if response.status == 416:  # the range starts past the end
                return b""
            data = await response.read()
            return data[:size] if response.status == 200 else data  # a server ignoring Range sends it all

    @asynccontextmanager
    async def get(self, key: str) -> AsyncIterator[aiohttp.ClientResponse]:
        async with self.request("GET", key) as response:
            yield response

    async def head(self, key: str) -> bool:
        async with self.request("HEAD", key, ok=(200, 404)) as response:
            return response.status == 200

    async def delete(self, key: str) -> None:
        async with self.request("DELETE", key, ok=(200, 204, 404)):
            pass

    async def delete_many(self, keys: list[str]) -> None:
        """DeleteObjects, 1,000 keys a call (https://docs.aws.amazon.com/AmazonS3/latest/API/API_DeleteObjects.html)."""
        for start in range(0, len(keys), 1000):
            root = ElementTree.Element("Delete")
            ElementTree.SubElement(root, "Quiet").text = "true"
            for key in keys[start:start + 1000]:
                ElementTree.SubElement(ElementTree.SubElement(root, "Object"), "Key").text = key
            body = ElementTree.tostring(root, xml_declaration=True, encoding="UTF-8")
            md5 = base64.b64encode(hashlib.md5(body).digest()).decode()  # DeleteObjects requires it
            async with self.request("POST", query={"delete": ""}, body=body,
                                    headers={"content-md5": md5, "content-type": "application/xml"}) as response:
                errors = _children(ElementTree.fromstring(await response.read()), "Error")
                if errors:
                    raise store_error(f"DeleteObjects: {_find(errors[0], 'Code')} for {len(errors)} keys")

    async def listing(self, prefix: str) -> AsyncIterator[ListedObject]:
        """Every object under `prefix` (ListObjectsV2, a page of up to 1,000 at a time)."""
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            async with self.request("GET", query=query) as response:
                root = ElementTree.fromstring(await response.read())
            for item in _children(root, "Contents"):
                yield ListedObject(_find(item, "Key"), int(_find(item, "Size") or 0), _find(item, "LastModified"))
            token = _find(root, "NextContinuationToken")
            if _find(root, "IsTruncated") != "true" or not token:
                return

    # -------------------------------------------------------------- multipart

    async def create_multipart(self, key: str) -> str:
        async with self.request("POST", key, query={"uploads": ""}) as response:
            return _find(ElementTree.fromstring(await response.read()), "UploadId")

    async def upload_part(self, key: str, upload_id: str, number: int, body: bytes) -> str:
        async with self.request("PUT", key, query={"partNumber": str(number), "uploadId": upload_id},
                                body=body) as response:
            return response.headers.get("etag", "")

    async def complete_multipart(self, key: str, upload_id: str, etags: list[str]) -> None:
        root = ElementTree.Element("CompleteMultipartUpload")
        for number, etag in enumerate(etags, start=1):
            part = ElementTree.SubElement(root, "Part")
            ElementTree.SubElement(part, "PartNumber").text = str(number)
            ElementTree.SubElement(part, "ETag").text = etag
        body = ElementTree.tostring(root, xml_declaration=True, encoding="UTF-8")
        async with self.request("POST", key, query={"uploadId": upload_id}, body=body) as response:
            # A 200 can still carry an error: https://docs.aws.amazon.com/AmazonS3/latest/API/API_CompleteMultipartUpload.html
            text = await response.read()
            root = ElementTree.fromstring(text)
            if root.tag.endswith("Error"):
                raise store_error(f"CompleteMultipartUpload: {_find(root, 'Code')}")

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            async with self.request("DELETE", key, query={"uploadId": upload_id}, ok=(200, 204, 404)):
                pass
        except Unavailable as exc:  # S3 drops parts of abandoned uploads only by a lifecycle rule: say so
            log.warning("could not abort the multipart upload of %s (%s): its parts stay until a lifecycle "
                        "rule (AbortIncompleteMultipartUpload) drops them", key, exc)


async def _describe(response: aiohttp.ClientResponse, method: str) -> str:
    """`PUT: 403 AccessDenied (Access Denied)` from S3's XML error body, if it sent one."""
    code = message = ""
    try:
        root = ElementTree.fromstring(await response.read())
        code, message = _find(root, "Code"), _find(root, "Message")
    except (ElementTree.ParseError, aiohttp.ClientError):
        pass
    return f"{method}: {response.status} {code} ({message[:200]})" if code else f"{method}: {response.status}"
