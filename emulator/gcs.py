"""Cloud Storage access through ``STORAGE_EMULATOR_HOST`` (fake-gcs-server), over its JSON API.

Plain ``requests`` with short timeouts and no hidden retries: an operation that
cannot reach Cloud Storage fails at once with a message naming the URL.
"""

from __future__ import annotations

import os
from typing import Iterator
from urllib.parse import quote

import requests

from emulator.errors import FAILED_PRECONDITION, NOT_FOUND, UNAVAILABLE, ApiError

TIMEOUT = 30.0
LIST_PAGE = 1000


class Gcs:
    """A Cloud Storage JSON API endpoint (one session; use one instance per thread)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = requests.Session()

    @classmethod
    def from_env(cls) -> "Gcs":
        host = os.environ.get("STORAGE_EMULATOR_HOST", "").strip()
        if not host:
            raise ApiError(
                FAILED_PRECONDITION,
                "the emulator has no Cloud Storage: start it with STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT "
                "(a fake-gcs-server) in its environment",
            )
        if "://" not in host:
            host = "http://" + host
        return cls(host)

    def close(self) -> None:
        self._session.close()

    def _get(self, url: str, **params: str) -> requests.Response:
        try:
            return self._session.get(url, params=params, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise ApiError(UNAVAILABLE, f"Cloud Storage at {self.base_url} did not answer: {exc.__class__.__name__}") from None

    @staticmethod
    def _check(response: requests.Response, what: str) -> None:
        if response.status_code == 404:
            raise ApiError(NOT_FOUND, f"{what} not found in Cloud Storage")
        if response.status_code >= 400:
            raise ApiError(
                UNAVAILABLE, f"Cloud Storage answered {response.status_code} for {what}: {response.text[:200]}"
            )

    def bucket_exists(self, bucket: str) -> bool:
        response = self._get(f"{self.base_url}/storage/v1/b/{quote(bucket, safe='')}")
        if response.status_code == 404:
            return False
        self._check(response, f"bucket gs://{bucket}")
        return True

    def list_names(self, bucket: str, prefix: str) -> Iterator[str]:
        """Object names starting with ``prefix``, every page."""
        url = f"{self.base_url}/storage/v1/b/{quote(bucket, safe='')}/o"
        token = ""
        while True:
            params = {"prefix": prefix, "maxResults": str(LIST_PAGE), "fields": "items(name),nextPageToken"}
            if token:
                params["pageToken"] = token
            response = self._get(url, **params)
            self._check(response, f"bucket gs://{bucket}")
            body = response.json()
            for item in body.get("items", []):
                yield item["name"]
            token = body.get("nextPageToken", "")
            if not token:
                return

    def read(self, bucket: str, name: str) -> bytes:
        response = self._get(f"{self.base_url}/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}", alt="media")
        self._check(response, f"object gs://{bucket}/{name}")
        return response.content

    def write(self, bucket: str, name: str, data: bytes, content_type: str) -> None:
        url = f"{self.base_url}/upload/storage/v1/b/{quote(bucket, safe='')}/o"
        try:
            response = self._session.post(
                url,
                params={"uploadType": "media", "name": name},
                data=data,
                headers={"Content-Type": content_type},
                timeout=TIMEOUT,
            )
        except requests.RequestException as exc:
            raise ApiError(UNAVAILABLE, f"Cloud Storage at {self.base_url} did not answer: {exc.__class__.__name__}") from None
        self._check(response, f"bucket gs://{bucket}")
