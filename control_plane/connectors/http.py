"""A JSON HTTP API as a source, read page by page. Every request, next pages and redirects
included, goes through the project's scope: its host is resolved and checked, and the request
is sent to the address checked (`control_plane.policy`). The config's headers (credentials, as
a rule) go only to the origin of the configured URL, never to a page or redirect elsewhere."""

import socket
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
from pydantic import AfterValidator, Field

from control_plane.connectors import (
    Batch,
    CheckStep,
    HttpUrl,
    Record,
    Source,
    TypeConfig,
    mask_url,
    secret_field,
    url_field,
)
from control_plane.connectors._batching import batched
from control_plane.policy import Scope, port_of


def _dig(answer: Any, path: str | None) -> Any:
    """The value at a dotted path (`data.items`) in a JSON answer, or None; without a path, all."""
    for key in path.split(".") if path else []:
        if not isinstance(answer, dict):
            return None
        answer = answer.get(key)
    return answer


MAX_REDIRECTS = 5


def _no_host(headers: dict[str, str]) -> dict[str, str]:
    # The request goes to the address checked; a Host header would let a proxy or an ingress
    # there route it to a service the check never saw.
    if any(name.strip().lower() == "host" for name in headers):
        raise ValueError("Host is set from the URL; leave it out of headers")
    return headers


# Request headers of a config: credentials, as a rule, sent only to the configured origin.
Headers = Annotated[dict[str, str], AfterValidator(_no_host)]


def origin_of(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def reach(scope: Scope, value: str, timeout: float) -> str:
    """A check's connect step: a TCP connection to the address the scope checked."""
    url, address = scope.http_url(value)
    try:
        with socket.create_connection((str(address), port_of(url)), timeout):
            return f"{url.host}:{port_of(url)} accepts connections"
    except OSError as error:
        raise ConnectionError(
            f"{url.host}:{port_of(url)} cannot be reached ({error.strerror or error}): is "
            "the server up, and does it listen there?"
        ) from None


class HttpSource(Source):
    name = "http"

    class Config(TypeConfig):
        url: HttpUrl = url_field(description="URL of the first page (GET, JSON).")
        headers: Headers = secret_field(
            default_factory=dict,
            description=(
                "Headers of the requests to the URL's origin (scheme, host, port), e.g. "
                "Authorization; not Host."
            ),
        )
        records_path: str | None = Field(
            default=None, description="Dotted path to the list of records in the JSON answer."
        )
        next_page_path: str | None = Field(
            default=None,
            description="Dotted path to the next page's URL; without it the Link header is used.",
        )
        timeout: float = Field(default=30.0, gt=0, description="Seconds to wait for each page.")

    config: Config

    def read(self, *, cursor: Any | None, batch_size: int) -> Iterator[Batch]:
        """The records of every page, following the pagination until there is no next page."""
        return batched(self._records(), batch_size)

    def check_steps(self) -> list[CheckStep]:
        return [("connect", self._reach), ("authenticate", self._let_in), *super().check_steps()]

    def _reach(self) -> str:
        return reach(self.scope, self.config.url, self.config.timeout)

    def _let_in(self) -> str:
        """The first page's status: 401 or 403 means the credentials are wrong or lacking."""
        with self._client() as client:
            response = self._get(client, str(httpx.URL(self.config.url)))
        answered = f"{mask_url(str(response.url))} answered {response.status_code} "
        answered += response.reason_phrase
        if response.status_code in (401, 403):
            raise PermissionError(f"{answered}: check the credentials in headers")
        if response.is_error:
            raise ValueError(answered)
        return answered

    def _client(self) -> httpx.Client:
        return httpx.Client(
            timeout=self.config.timeout,
            transport=self.scope.transport(),
            trust_env=False,  # a proxy from the environment would hide the real host
        )

    def _records(self) -> Iterator[Record]:
        url: str | None = str(httpx.URL(self.config.url))
        seen: set[str] = set()
        with self._client() as client:
            while url is not None:
                if url in seen:
                    raise ValueError(f"the pagination loops: {mask_url(url)} was already read")
                seen.add(url)
                response = self._get(client, url)
                if response.is_error:
                    # The status and the URL without its secrets; never the (secret) headers.
                    raise ValueError(
                        f"{mask_url(str(response.url))} answered {response.status_code} "
                        f"{response.reason_phrase}"
                    )
                answer = response.json()
                records = _dig(answer, self.config.records_path)
                if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                    raise ValueError(
                        f"{mask_url(url)}: expected a list of objects at recordsPath "
                        f"{self.config.records_path or '(the answer itself)'}"
                    )
                yield from records
                url = self._next_page(response, answer)

    def _get(self, client: httpx.Client, url: str) -> httpx.Response:
        """GET `url`, following redirects; the headers only where the configured URL points."""
        home = origin_of(httpx.URL(self.config.url))
        for _ in range(MAX_REDIRECTS + 1):
            target = httpx.URL(url)
            headers = self.config.headers if origin_of(target) == home else {}
            response = client.get(target, headers=headers)
            if not response.is_redirect:
                return response
            url = str(response.url.join(response.headers["Location"]))
        raise ValueError(f"{mask_url(url)}: more than {MAX_REDIRECTS} redirects")

    def _next_page(self, response: httpx.Response, answer: Any) -> str | None:
        if self.config.next_page_path is None:
            link = response.links.get("next", {}).get("url")
        else:
            link = _dig(answer, self.config.next_page_path)
        if not link:  # null, missing or "" on the last page
            return None
        if not isinstance(link, str):
            raise ValueError(f"{mask_url(str(response.url))}: the next page is not a URL")
        # Next-page links may be relative to the page they are on.
        return str(response.url.join(link))
