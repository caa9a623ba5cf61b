"""What the Label Studio ML backend reads from Label Studio: a project's labelling config, its
annotated tasks and their images.

Where Label Studio is and the key to use come from Label Studio's own variables,
LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, else from what Label Studio sends to `/setup`
(hostname, access_token). A key is either a legacy token (sent as "Token KEY") or a personal
access token, a JWT that Label Studio exchanges for a short-lived access token (sent as
"Bearer ACCESS", renewed when Label Studio answers 401).
"""
from __future__ import annotations

import io
import os
import threading
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx
import numpy as np
from PIL import Image

from data.decode import orient, to_rgb
from errors import UserError

URL_VARIABLE, KEY_VARIABLE = "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"
TIMEOUT_S = 60.0  # one request to Label Studio or an image host
MAX_PIXELS = 25_000_000  # as the page: 5000 x 5000; larger images are refused, not shrunk


@dataclass(frozen=True)
class LabelConfig:
    """What the backend needs of a project's labelling config.

    Args:
        from_name: the BrushLabels tag's name (predictions are brush regions of it).
        to_name: the Image tag's name.
        label: the label predicted and learnt (the BrushLabels tag's first <Label>).
        data_key: the task data's key holding the image (<Image value="$key">).
    """

    from_name: str
    to_name: str
    label: str
    data_key: str


def parse_label_config(xml: str) -> LabelConfig:
    """Find the BrushLabels tag, its first label and its image in a labelling config.

    Args:
        xml: the project's labelling config.

    Returns:
        LabelConfig.

    Raises:
        UserError: not XML, no BrushLabels tag with a Label, or no Image tag it points to.
    """
    try:
        root = ElementTree.fromstring(xml or "")
    except ElementTree.ParseError as e:
        raise UserError(f"The labelling config is not XML ({e}).") from e
    tags = list(root.iter())
    brush = next((t for t in tags if t.tag.lower() == "brushlabels"), None)
    labels = [t.get("value") for t in brush or [] if t.tag.lower() == "label" and t.get("value")]
    if brush is None or not labels or not brush.get("name") or not brush.get("toName"):
        raise UserError("metaseg pre-labels with a brush: the labelling config needs "
                        "<BrushLabels name=\"tag\" toName=\"image\"> holding one "
                        "<Label value=\"...\"/> (the object to segment).")
    image = next((t for t in tags if t.tag.lower() == "image"
                  and t.get("name") == brush.get("toName")), None)
    if image is None or not (image.get("value") or "").startswith("$"):
        raise UserError(f"The labelling config's BrushLabels points to toName="
                        f"{brush.get('toName')!r} but there is no <Image name="
                        f"{brush.get('toName')!r} value=\"$image\"/>.")
    return LabelConfig(brush.get("name"), brush.get("toName"), labels[0],
                       image.get("value")[1:])


def _is_jwt(key: str) -> bool:
    """A personal access token is a JWT (three dot-separated parts); a legacy token is hex."""
    return key.count(".") == 2


class LabelStudioClient:
    """Requests to one Label Studio, authorised with one key.

    Args:
        url: Label Studio's address, e.g. http://127.0.0.1:8080.
        api_key: a legacy token or a personal access token.
    """

    def __init__(self, url: str, api_key: str):
        if urlsplit(url).scheme not in ("http", "https"):
            raise UserError(f"Label Studio's address {url!r} must start with http:// or "
                            f"https:// (set {URL_VARIABLE}).")
        self.url = url.rstrip("/") + "/"
        self.api_key = api_key
        self._access = None  # the short-lived token of a personal access token
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=TIMEOUT_S, follow_redirects=True)

    def _authorization(self, renew: bool = False) -> str:
        if not _is_jwt(self.api_key):
            return f"Token {self.api_key}"
        with self._lock:
            if renew or self._access is None:
                answer = self._http.post(urljoin(self.url, "api/token/refresh/"),
                                         json={"refresh": self.api_key})
                if answer.status_code != 200:
                    raise UserError(f"Label Studio at {self.url} refused the personal access "
                                    f"token ({answer.status_code}); set {KEY_VARIABLE} to a "
                                    f"valid one (Account & Settings > Personal Access Token).")
                self._access = answer.json()["access"]
            return f"Bearer {self._access}"

    def _get(self, url: str, what: str, authorised: bool = True) -> httpx.Response:
        """GET a URL (renewing an expired access token once); errors name the URL."""
        try:
            headers = {"Authorization": self._authorization()} if authorised else {}
            answer = self._http.get(url, headers=headers)
            if answer.status_code == 401 and authorised and _is_jwt(self.api_key):
                answer = self._http.get(url, headers={
                    "Authorization": self._authorization(renew=True)})
        except httpx.HTTPError as e:
            raise UserError(f"Cannot reach {url} for {what}: {e}.") from e
        if answer.status_code in (401, 403):
            raise UserError(f"{url} refused {what} ({answer.status_code}); set {KEY_VARIABLE} "
                            f"to the API key of a user of that project.")
        if answer.status_code != 200:
            raise UserError(f"{url} answered {answer.status_code} for {what}.")
        return answer

    def annotated_tasks(self, project_id: int) -> list:
        """Every task of a project with at least one annotation (Label Studio's JSON export).

        Args:
            project_id: the project's id.

        Returns:
            the export's tasks, each with its data and annotations.
        """
        url = urljoin(self.url, f"api/projects/{int(project_id)}/export?exportType=JSON"
                                f"&download_all_tasks=false")
        answer = self._get(url, f"the annotated tasks of project {project_id}")
        try:
            return answer.json()
        except ValueError as e:
            raise UserError(f"{url} did not answer JSON ({e}).") from e

    def image(self, ref: str, where: str) -> np.ndarray:
        """Fetch and decode a task's image.

        Args:
            ref: the task's image: an http(s) URL (fetched directly, with the key only when it
                points to Label Studio) or a Label Studio path such as /data/upload/3/a.jpg.
            where: how to name the task in errors.

        Returns:
            uint8 RGB (H, W, 3), as displayed (EXIF orientation applied).
        """
        parts = urlsplit(ref)
        if parts.scheme in ("http", "https"):
            url, authorised = ref, parts.netloc == urlsplit(self.url).netloc
        elif not parts.scheme and ref.startswith("/"):
            url, authorised = urljoin(self.url, ref.lstrip("/")), True
        else:
            raise UserError(f"{where}: its image {ref!r} is neither an http(s) URL nor a Label "
                            f"Studio path (/data/...); cloud storage URIs are not read here.")
        return decode_image(self._get(url, f"the image of {where}", authorised).content,
                            f"the image of {where} ({url})")


def decode_image(content: bytes, what: str) -> np.ndarray:
    """Decode image bytes as uint8 RGB, as displayed.

    Args:
        content: the file's bytes.
        what: how to name it in errors.

    Returns:
        uint8 (H, W, 3).

    Raises:
        UserError: not an image, or larger than MAX_PIXELS.
    """
    try:
        with Image.open(io.BytesIO(content)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise UserError(f"{what} is {image.width}x{image.height} pixels; the backend "
                                f"takes up to {MAX_PIXELS:,} (shrink it in Label Studio).")
            image.load()
            return to_rgb(orient(image), what)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"Cannot decode {what}: {e}.") from e


def address(hostname: str | None = None, access_token: str | None = None) -> tuple[str, str]:
    """Label Studio's address and key: LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY, else /setup's.

    Args:
        hostname: Label Studio's address as /setup gives it.
        access_token: the key /setup gives.

    Returns:
        (url, key).

    Raises:
        UserError: neither the variables nor /setup's values say where Label Studio is.
    """
    url = os.environ.get(URL_VARIABLE) or hostname
    key = os.environ.get(KEY_VARIABLE) or access_token
    if not url or not key:
        raise UserError(f"The backend does not know where Label Studio is: set {URL_VARIABLE} "
                        f"and {KEY_VARIABLE} (a user's API key), or connect the backend to a "
                        f"project so that Label Studio sends them to /setup.")
    return url, key
