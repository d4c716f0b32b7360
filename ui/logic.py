"""What the web page does, without Streamlit: configuration, samples, the connection to Triton,
running the two chains on an upload or a sample, and turning errors into messages.

The page (:mod:`lookserve.ui.app`) only lays these out. Everything talks to Triton through
lookserve's client library — :class:`~lookserve.client.core.TritonClient`,
:class:`~lookserve.client.look.LookPipeline` over a catalog opened with
:func:`~lookserve.client.catalog.open_catalog` (any catalog address: a directory, a catalog root,
``milvus://HOST:PORT/ALIAS``; the page only uses the :class:`~lookserve.client.catalog.CatalogBackend`
interface), and
:class:`~lookserve.client.thumbnails.ThumbnailPipeline` — never with its own requests.

Every image, uploaded or sample, is decoded with :func:`lookserve.images.decode_image`'s limits
before it is sent anywhere, so a non-image, a truncated file or a decompression bomb becomes an
:class:`~lookserve.errors.InvalidInputError` naming the file and the problem.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lookserve import errors
from lookserve.client import render
from lookserve.client.catalog import catalog_path, is_milvus_address, open_catalog
from lookserve.client.catalog.address import milvus_backend
from lookserve.client.core import TritonClient
from lookserve.client.look import LookConfig, LookPipeline
from lookserve.client.render import overlay
from lookserve.client.thumbnails import ThumbnailConfig, ThumbnailPipeline, find_products
from lookserve.data import street2shop
from lookserve.images import DEFAULT_LIMITS, IMAGE_SUFFIXES, DecodeLimits, decode_image

log = logging.getLogger(__name__)

#: environment variables the page reads (``lookserve ui`` sets them for ``streamlit run``)
ENV_URL = "LOOKSERVE_URL"
ENV_CATALOG = "LOOKSERVE_UI_CATALOG"
ENV_SAMPLES = "LOOKSERVE_UI_SAMPLES"
ENV_MODEL_REPOSITORY = "LOOKSERVE_UI_MODEL_REPOSITORY"
ENV_TIMEOUT = "LOOKSERVE_UI_TIMEOUT"
ENV_VERBOSE = "LOOKSERVE_UI_VERBOSE"

#: query parameters the page honours (shareable links, and how a browser test picks a query)
QUERY_MODE = "mode"  # "look" (default) or "thumbnails"
QUERY_SAMPLE = "sample"  # a street photo of the samples, by file name
QUERY_PRODUCT = "product"  # a footwear product of the samples, by folder name

MODES = ("look", "thumbnails")
MAX_UPLOAD_MB = DEFAULT_LIMITS.max_bytes // (1024 * 1024)  # Streamlit's upload limit = the decoder's


@dataclass(frozen=True)
class UiConfig:
    """Where the page finds Triton, the catalog and the samples."""

    url: str = "127.0.0.1:8001"
    catalog: Path | str | None = None  # a catalog address (open_catalog): a path, file://PATH or milvus://HOST:PORT/ALIAS
    samples: Path | None = None
    model_repository: Path | None = None  # also check the embedder's model-file checksum
    timeout_s: float = 30.0
    connect_timeout_s: float = 3.0  # how long the page waits for an unreachable server
    limits: DecodeLimits = DEFAULT_LIMITS

    def __post_init__(self) -> None:
        if not self.url:
            raise errors.ConfigError("the Triton URL is empty")
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise errors.ConfigError(f"timeouts must be positive, got {self.timeout_s} and {self.connect_timeout_s}")
        if self.catalog is not None:  # a malformed address is refused here, before the page starts
            if is_milvus_address(self.catalog):
                milvus_backend().parse_address(str(self.catalog))
            else:
                catalog_path(self.catalog)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> UiConfig:
        env = os.environ if env is None else env

        def path(name: str) -> Path | None:
            value = env.get(name, "").strip()
            return Path(value) if value else None

        timeout = env.get(ENV_TIMEOUT, "").strip()
        try:
            timeout_s = float(timeout) if timeout else cls.timeout_s
        except ValueError as e:
            raise errors.ConfigError(f"{ENV_TIMEOUT}={timeout!r} is not a number of seconds") from e
        catalog = env.get(ENV_CATALOG, "").strip()
        return cls(url=env.get(ENV_URL, "").strip() or cls.url, catalog=catalog_address(catalog) if catalog else None,
                   samples=path(ENV_SAMPLES),
                   model_repository=path(ENV_MODEL_REPOSITORY), timeout_s=timeout_s)

    def to_env(self) -> dict[str, str]:
        """The environment that makes :meth:`from_env` return this configuration."""
        env = {ENV_URL: self.url, ENV_TIMEOUT: str(self.timeout_s)}
        catalog = catalog_address(self.catalog) if self.catalog is not None else None
        env[ENV_CATALOG] = "" if catalog is None else str(catalog.resolve() if isinstance(catalog, Path) else catalog)
        for name, value in ((ENV_SAMPLES, self.samples), (ENV_MODEL_REPOSITORY, self.model_repository)):
            env[name] = str(Path(value).resolve()) if value is not None else ""
        return env


def catalog_address(value: str | os.PathLike) -> Path | str:
    """A catalog address as the page keeps it: a path as a :class:`Path`, a ``scheme://`` address as given."""
    return value if isinstance(value, str) and "://" in value else Path(value)


# ------------------------------------------------------------------------------------------
# Samples
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Samples:
    """Street photos (name → path) and footwear products (name → view paths) to pick from."""

    street: Mapping[str, Path] = field(default_factory=dict)
    footwear: Mapping[str, Sequence[Path]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # why a kind of sample is missing
    #: street photo → category → the product it shows (a street2shop data set's pairs)
    truth: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


def find_samples(root: str | os.PathLike | None) -> Samples:
    """Samples under ``root``: a street2shop-format data set (``lookserve data generate`` or
    ``make demo``'s ``runs/demo/data``: its street photos and ``footwear/views/<product>/``),
    or a plain folder with ``street/*.jpg`` and ``footwear/<product>/*.jpg``."""

    if root is None:
        return Samples(notes=("no samples folder given (lookserve ui --samples DIR)",))
    root = Path(root)
    if not root.is_dir():
        return Samples(notes=(f"samples folder {root} does not exist",))
    notes: list[str] = []
    street: dict[str, Path] = {}
    truth: dict[str, dict[str, int]] = {}
    if (root / "photos" / "photos.txt").is_file():
        try:
            data = street2shop.load(root)
        except errors.LookserveError as e:
            notes.append(f"street photos: {e}")
        else:
            paths = sorted({p.street_path for p in data.pairs}, key=lambda p: (len(p.stem), p.stem))
            street = {p.name: p for p in paths}
            for pair in data.pairs:
                truth.setdefault(pair.street_path.name, {})[pair.category] = pair.product
    elif (root / "street").is_dir():
        street = {p.name: p for p in sorted((root / "street").iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    if not street:
        notes.append(f"no street photos under {root}")
    footwear: dict[str, list[Path]] = {}
    if (root / "footwear").is_dir():  # a data set's footwear/views/<product>/, or footwear/<product>/
        try:
            views = root / "footwear" / "views"
            footwear = find_products(views if views.is_dir() else root / "footwear")
        except errors.DataError as e:
            notes.append(f"footwear: {e}")
    if not footwear and not any(n.startswith("footwear") for n in notes):
        notes.append(f"no footwear products under {root} (expected footwear/views/<product>/<view>.jpg)")
    return Samples(street=street, footwear=footwear, notes=tuple(notes), truth=truth)


# ------------------------------------------------------------------------------------------
# The connection: one client, the two chains, each with the reason it is unusable
# ------------------------------------------------------------------------------------------
@dataclass
class Services:
    config: UiConfig
    client: Any  # TritonClient
    look: Any = None  # LookPipeline, or None with look_error
    look_error: str | None = None
    thumbnails: Any = None  # ThumbnailPipeline, or None with thumbnails_error
    thumbnails_error: str | None = None

    @property
    def catalog(self):
        return self.look.catalog if self.look is not None else None

    def close(self) -> None:
        self.client.close()


def connect(config: UiConfig) -> Services:
    """Reach Triton and set up both chains.

    Raises :class:`~lookserve.errors.ServerUnavailable` when the server does not answer within
    ``config.connect_timeout_s``. A chain that cannot be set up (no catalog, a catalog built by
    another embedder version, a model not loaded) is left ``None`` with the message explaining
    why, so the other chain still works.
    """

    client = TritonClient(config.url, timeout_s=config.timeout_s)
    try:
        client.wait_ready(deadline_s=config.connect_timeout_s)
    except errors.ServerUnavailable:
        client.close()
        raise
    services = Services(config, client)
    try:
        if config.catalog is None:
            raise errors.CatalogError("no catalog given (lookserve ui --catalog DIR or milvus://HOST:PORT/ALIAS; "
                                      "build one with lookserve catalog build)")
        if not is_milvus_address(config.catalog) and not catalog_path(config.catalog).exists():
            raise errors.CatalogError(f"catalog folder {config.catalog} does not exist (build one with lookserve catalog build)")
        catalog = open_catalog(config.catalog, client, config.model_repository)
        services.look = LookPipeline(client, catalog, LookConfig(limits=config.limits, timeout_s=config.timeout_s))
    except errors.LookserveError as e:
        log.warning("shop the look is unavailable: %s", e)
        services.look_error = explain(e)
    try:
        services.thumbnails = ThumbnailPipeline(client, ThumbnailConfig(limits=config.limits, timeout_s=config.timeout_s))
    except errors.LookserveError as e:
        log.warning("thumbnails are unavailable: %s", e)
        services.thumbnails_error = explain(e)
    return services


# ------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageInput:
    """One image to send: its name for people, its encoded bytes or path, and its pixels."""

    name: str
    source: bytes | Path
    pixels: np.ndarray  # RGB uint8, decoded with the page's limits


def load_input(name: str, source: bytes | str | os.PathLike, limits: DecodeLimits = DEFAULT_LIMITS) -> ImageInput:
    """Decode an upload (bytes) or a sample (path); :class:`InvalidInputError` names the file
    and the problem (not an image, truncated, too large, a possible decompression bomb)."""
    if isinstance(source, bytes | bytearray | memoryview):
        source = bytes(source)
        if not source:
            raise errors.InvalidInputError(f"{name!r} is an empty file")
    else:
        source = Path(source)
    try:
        pixels = decode_image(source, limits)
    except errors.InvalidInputError as e:
        raise errors.InvalidInputError(f"{name!r} cannot be used: {e}") from e
    return ImageInput(name, source, pixels)


# ------------------------------------------------------------------------------------------
# Shop the look
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MatchView:
    rank: int
    product_id: int
    similarity: float
    title: str
    photo: Path | None  # the matching shop photo on this machine (None: not available)
    details: str  # the product's simple attributes, "key: value, ..."
    attributes: Mapping[str, Any]
    is_truth: bool = False  # the product the photo shows (known for a data set's samples)

    @property
    def caption(self) -> str:
        mark = " · ✓ the photo's product" if self.is_truth else ""
        return f"#{self.rank} · product {self.product_id} · sim {self.similarity:.3f}{mark}"


@dataclass(frozen=True)
class ItemView:
    number: int
    category: str
    score: float
    box: tuple[float, float, float, float]
    colour: str  # hex, the colour of its mask and box on the photo
    matches: tuple[MatchView, ...]
    truth: int | None = None  # the product the photo shows in this category, when known

    @property
    def truth_note(self) -> str:
        """Where the photo's own product ranks, when the sample comes with its pairs."""
        if self.truth is None:
            return ""
        ranks = [m.rank for m in self.matches if m.product_id == self.truth]
        if ranks:
            return f"the photo's product {self.truth} is #{ranks[0]}"
        return f"the photo's product {self.truth} is not in the top {len(self.matches)}"

    @property
    def heading(self) -> str:
        return f"{self.category} · detector score {self.score:.2f}"


@dataclass(frozen=True)
class LookView:
    input: ImageInput
    result: Any  # LookResult
    annotated: np.ndarray  # the photo with masks and boxes
    items: tuple[ItemView, ...]
    dropped: tuple[str, ...]  # "category score: reason"

    @property
    def timings(self) -> list[dict[str, Any]]:
        return timings_rows(self.result.timings_ms)

    @property
    def versions(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.result.model_versions.items()}


def _palette():
    return render.COLOURS  # the colours render.overlay tints masks with, item by item


def _hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{int(round(c * 255)):02x}" for c in rgb)


def annotate(image: np.ndarray, result) -> np.ndarray:
    """The photo with every kept item's mask (:func:`lookserve.client.render.overlay`) and its
    box and label in the same colour."""


    colours = _palette()
    out = Image.fromarray(overlay(image, result))
    draw = ImageDraw.Draw(out)
    side = max(image.shape[:2])
    width = max(2, side // 200)
    try:
        font = ImageFont.load_default(size=max(11, side // 32))
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        font = ImageFont.load_default()
    for n, item in enumerate(result.items):
        d = item.detection
        colour = tuple(int(round(c * 255)) for c in colours[n % len(colours)])
        x1, y1, x2, y2 = d.box
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        label = f"{n + 1} {d.category} {d.score:.2f}"
        _, top, _, bottom = draw.textbbox((0, 0), label, font=font)
        tx, ty = x1, max(0.0, y1 - (bottom - top) - 4)  # above the box, inside the photo
        left, top, right, bottom = draw.textbbox((tx, ty), label, font=font)
        draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=colour)
        draw.text((tx, ty), label, fill=(255, 255, 255), font=font)
    return np.asarray(out)


def _details(attributes: Mapping[str, Any], limit: int = 4) -> str:
    simple = [(k, v) for k, v in attributes.items() if isinstance(v, str | int | float) and not isinstance(v, bool)]
    simple = [(k, v) for k, v in simple if not k.endswith("_seed")]
    return ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in simple[:limit])


def look_view(inp: ImageInput, result, catalog, truth: Mapping[str, int] | None = None) -> LookView:
    """Lay out a :class:`~lookserve.client.look.LookResult`: the annotated photo, and per item
    its matches with the shop photo and the product's metadata (from the catalog's SQLite,
    which the chain reads with :meth:`Catalog.products`). ``truth`` (category → product id)
    marks the photo's own products when known."""
    truth = truth or {}
    colours = _palette()
    items = []
    for n, item in enumerate(result.items):
        d = item.detection
        matches = tuple(
            MatchView(rank=r + 1, product_id=m.product_id, similarity=m.similarity, title=m.title or f"product {m.product_id}",
                      photo=_existing(catalog.image_path(m.photo_image)) if catalog is not None else None,
                      details=_details(m.attributes), attributes=dict(m.attributes),
                      is_truth=truth.get(d.category) == m.product_id)
            for r, m in enumerate(item.matches)
        )
        items.append(ItemView(n + 1, d.category, d.score, d.box, _hex(colours[n % len(colours)]), matches,
                              truth.get(d.category)))
    dropped = tuple(f"{x.detection.category} {x.detection.score:.2f}: {x.reason.replace('_', ' ')}" for x in result.dropped)
    return LookView(inp, result, annotate(inp.pixels, result), tuple(items), dropped)


def catalog_caption(catalog) -> str:
    """One line on the catalog, from the :class:`~lookserve.client.catalog.CatalogBackend` interface."""
    counts = catalog.describe().get("counts", {})
    photos, products = counts.get("photos", "?"), counts.get("products", "?")
    return (f"Catalog {catalog.address}: {products} products ({photos} shop photos) in {len(catalog.categories)} categories, "
            f"built by {catalog.embedder.name} v{catalog.embedder.version}")


def catalog_attributes(catalog) -> dict[str, str]:
    """The catalog's filterable attributes (name → type), from :meth:`CatalogBackend.describe`."""
    return dict(catalog.describe().get("attributes", {}))


def _existing(path: Path | None) -> Path | None:
    return path if path is not None and path.is_file() else None


def run_look(services: Services, inp: ImageInput, min_score: float | None = None, k: int | None = None,
             truth: Mapping[str, int] | None = None, catalog_filter: str | None = None) -> LookView:
    """Shop the look for one decoded input (``min_score``/``k`` override the chain's defaults;
    ``truth``: category → the product the photo shows, to mark it among the matches;
    ``catalog_filter``: only products whose attributes pass, e.g. ``price < 50 and in_stock``)."""
    if services.look is None:
        raise errors.CatalogError(services.look_error or "shop the look is not available")
    pipe = services.look
    config = pipe.config
    if min_score is not None and min_score != config.filter.min_score:
        config = replace(config, filter=replace(config.filter, min_score=float(min_score)))
    if k is not None and k != config.k:
        config = replace(config, k=int(k))
    catalog_filter = (catalog_filter or "").strip() or None
    if catalog_filter != config.catalog_filter:
        config = replace(config, catalog_filter=catalog_filter)  # a malformed filter raises FilterError here
    if config is not pipe.config:
        pipe = _with_config(pipe, config)
    result = pipe.run(inp.source)
    return look_view(inp, result, pipe.catalog, truth)


def _with_config(pipe, config):
    """A shallow copy of a set-up chain with another configuration (no new metadata requests)."""

    clone = copy.copy(pipe)
    clone.config = config
    return clone


# ------------------------------------------------------------------------------------------
# Thumbnails
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ViewRank:
    rank: int
    name: str
    best_view: float
    is_thumbnail: bool
    pixels: np.ndarray

    @property
    def caption(self) -> str:
        star = " · thumbnail" if self.is_thumbnail else ""
        return f"#{self.rank} {self.name} · best view {self.best_view:.3f}{star}"


@dataclass(frozen=True)
class ThumbnailView:
    product: str
    result: Any  # ThumbnailResult
    thumbnail: ImageInput
    ranked: tuple[ViewRank, ...]  # views by best-view probability, highest first

    @property
    def type_rows(self) -> list[dict[str, Any]]:
        rows = [{"footwear type": t, "probability": round(float(p), 4)} for t, p in self.result.type_probs.items()]
        return sorted(rows, key=lambda r: -r["probability"])

    @property
    def timings(self) -> list[dict[str, Any]]:
        return timings_rows(self.result.timings_ms)

    model: str = "view_classifier"

    @property
    def versions(self) -> dict[str, str]:
        return {self.model: str(self.result.model_version)}


def run_thumbnails(services: Services, product: str, views: Sequence[ImageInput]) -> ThumbnailView:
    """The best view and footwear type of one product's decoded views."""
    if services.thumbnails is None:
        raise errors.ModelNotReady(services.thumbnails_error or "thumbnails are not available")
    names = [v.name for v in views]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise errors.InvalidInputError(f"views must have distinct names; repeated: {', '.join(dupes)}")
    pipe = services.thumbnails
    result = pipe.run(product, [v.source for v in views])
    # The chain names byte inputs "view i" and paths by their path: map both back by position.
    order = [v.image for v in result.views]
    best = order.index(result.thumbnail)
    scores = [v.best_view for v in result.views]
    ranking = sorted(range(len(views)), key=lambda i: (-scores[i], i))
    ranked = tuple(ViewRank(r + 1, views[i].name, float(scores[i]), i == best, views[i].pixels)
                   for r, i in enumerate(ranking))
    return ThumbnailView(product, result, views[best], ranked, model=pipe.config.model)


# ------------------------------------------------------------------------------------------
# Shared
# ------------------------------------------------------------------------------------------
def timings_rows(timings_ms: Mapping[str, float]) -> list[dict[str, Any]]:
    """Per-stage latency as table rows, in the order the chain recorded them."""
    return [{"stage": stage, "ms": f"{float(ms):.1f}"} for stage, ms in timings_ms.items()]


def versions_line(versions: Mapping[str, str]) -> str:
    return " · ".join(f"{model} v{version}" for model, version in versions.items()) or "—"


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as a Markdown table (the page shows tables this way: Streamlit's st.table and
    st.dataframe go through pyarrow, which the numpy < 2 pin of this stack may not import)."""
    if not rows:
        return ""
    columns = list(rows[0])

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


_HEADLINES: tuple[tuple[type[BaseException], str], ...] = (
    (errors.ServerUnavailable, "Triton is not reachable"),
    (errors.DeadlineExceeded, "Triton did not answer in time"),
    (errors.ModelNotFound, "A model is not loaded on the server"),
    (errors.ModelNotReady, "A model is not ready on the server"),
    (errors.ContractMismatch, "A served model does not match what the page expects"),
    (errors.CatalogVersionMismatch, "The catalog belongs to another embedder version"),
    (errors.CatalogIntegrityError, "The catalog is damaged"),
    (errors.CatalogError, "The catalog cannot be used"),
    (errors.InvalidInputError, "Bad input"),
    (errors.ConfigError, "Bad configuration"),
    (errors.ServerError, "The server refused the request"),
    (errors.LookserveError, "Request failed"),
)


def explain(error: BaseException) -> str:
    """A one-paragraph message for people: what went wrong (by the error's class) and the
    error's own words, which name the problem and the way out."""
    for cls, headline in _HEADLINES:
        if isinstance(error, cls):
            return f"{headline}: {error}"
    return f"Unexpected {type(error).__name__}: {error} (the traceback is in the page's log)"


__all__ = [
    "ENV_CATALOG", "ENV_MODEL_REPOSITORY", "ENV_SAMPLES", "ENV_TIMEOUT", "ENV_URL", "MODES", "ImageInput", "ItemView",
    "LookView", "MatchView", "Samples", "Services", "ThumbnailView", "UiConfig", "ViewRank", "annotate", "catalog_address", "catalog_attributes", "catalog_caption", "connect",
    "explain", "find_samples", "load_input", "look_view", "markdown_table", "run_look", "run_thumbnails", "timings_rows", "versions_line",
]
