"""Catalog inputs: one :class:`PhotoRecord` per shop photo, from a street2shop-format data set
or a folder of images with a metadata CSV."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lookserve.client.catalog.attributes import infer_column, parse_text, split_header
from lookserve.data import street2shop
from lookserve.errors import DataError, InvalidInputError
from lookserve.taxonomy import CATEGORIES


@dataclass(frozen=True)
class PhotoRecord:
    """One shop photo of one product; a product may have several photos."""

    product_id: int
    category: str
    image: str  # path (absolute or relative to the data root) or URL, as stored in SQLite
    path: Path | None  # where to read it now; None if not available locally
    title: str = ""
    attributes: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise InvalidInputError(
                f"product {self.product_id}: unknown category {self.category!r}; expected one of {', '.join(CATEGORIES)}"
            )


def records_from_street2shop(root: str | os.PathLike, splits: Sequence[str] | None = None) -> list[PhotoRecord]:
    """Shop photos of a street2shop-format data set, read with :func:`lookserve.data.street2shop.load`
    (retrieval files joined to ``photos.txt``; titles and attributes from ``products.json`` when
    present; photos not on disk are skipped by the loader). ``splits`` keeps only those products."""
    root = Path(root)
    data = street2shop.load(root)
    records: list[PhotoRecord] = []
    for product_id in sorted(data.shop, key=lambda p: (CATEGORIES.index(data.product_category[p]), p)):
        if splits and data.product_split.get(product_id) not in splits:
            continue
        meta = data.products.get(product_id, {})
        for photo in data.shop[product_id]:
            path = data.shop_path(photo)
            try:
                image = str(path.relative_to(root))
            except ValueError:
                image = str(path)
            records.append(PhotoRecord(product_id=product_id, category=data.product_category[product_id], image=image,
                                       path=path, title=str(meta.get("title", "")),
                                       attributes=dict(meta.get("attributes", {}))))
    if not records:
        raise DataError(f"no shop photos found under {root}" + (f" for splits {list(splits)}" if splits else ""))
    return records


def records_from_csv(csv_path: str | os.PathLike, images_dir: str | os.PathLike | None = None,
                     schema: Mapping[str, str] | None = None) -> list[PhotoRecord]:
    """A CSV of metadata with columns ``id, category, image`` (+ optional ``title``; any other
    column becomes a typed attribute, see :mod:`~lookserve.client.catalog.attributes`: typed by
    ``schema`` — the catalog's, on update —, a ``name:type`` header, or inferred from the column).
    ``image`` is a path relative to ``images_dir`` (default: the CSV's folder) or a URL. A
    malformed row (wrong number of cells, bad id, category or typed value) is a
    :class:`DataError` naming the file and line; nothing is returned."""
    csv_path = Path(csv_path)
    base = Path(images_dir) if images_dir else csv_path.parent
    with csv_path.open(newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{csv_path} is empty; expected a header with id,category,image") from None
        except csv.Error as e:
            raise DataError(f"{csv_path}:1: {e}") from e
        try:
            columns = [split_header(h) for h in header]
        except InvalidInputError as e:
            raise DataError(f"{csv_path}:1: {e}") from e
        names = [c[0] for c in columns]
        missing = {"id", "category", "image"} - set(names)
        if missing:
            raise DataError(f"{csv_path}: missing column(s) {sorted(missing)}; have {names}")
        if len(set(names)) != len(names):
            raise DataError(f"{csv_path}:1: a column name appears twice: {names}")
        rows: list[tuple[int, list[str]]] = []
        try:
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != len(names):
                    raise DataError(f"{csv_path}:{reader.line_num}: {len(row)} cells, the header has {len(names)}")
                rows.append((reader.line_num, row))
        except csv.Error as e:
            raise DataError(f"{csv_path}:{reader.line_num}: {e}") from e
    attr_cols = [(j, name, kind) for j, (name, kind) in enumerate(columns) if name not in ("id", "category", "image", "title")]
    types: dict[str, str] = {}
    for j, name, kind in attr_cols:
        known = (schema or {}).get(name)
        if known and kind and known != kind:
            raise DataError(f"{csv_path}:1: column {name!r} is declared {kind}, but the catalog's attribute is {known}")
        types[name] = known or kind or infer_column(r[j] for _, r in rows)
    at = {name: j for j, name in enumerate(names)}
    records = []
    for n, row in rows:
        cell = {name: row[j] for name, j in at.items()}
        try:
            product_id = int(cell["id"])
        except ValueError as e:
            raise DataError(f"{csv_path}:{n}: id {cell['id']!r} is not an integer") from e
        image = cell["image"].strip()
        if not image:
            raise DataError(f"{csv_path}:{n}: product {product_id} has no image")
        local = None if image.startswith(("http://", "https://")) else base / image
        attrs: dict[str, Any] = {}
        for j, name, _ in attr_cols:
            try:
                value = parse_text(row[j], types[name])
            except ValueError as e:
                raise DataError(f"{csv_path}:{n}: attribute {name!r} expects a {types[name]}: {e}") from e
            if value is not None:
                attrs[name] = value
        try:
            records.append(PhotoRecord(product_id, cell["category"].strip(), image, local, cell.get("title") or "", attrs))
        except InvalidInputError as e:
            raise DataError(f"{csv_path}:{n}: {e}") from e
    if not records:
        raise DataError(f"{csv_path} has no rows")
    return records


def load_records(photos: str | os.PathLike, metadata_csv: str | os.PathLike | None = None,
                 splits: Sequence[str] | None = None, schema: Mapping[str, str] | None = None) -> list[PhotoRecord]:
    """Records from a street2shop-format root, a folder of images with a CSV, or a CSV file
    (images relative to its folder). ``schema``: attribute types CSV cells are read as."""
    photos = Path(photos)
    if metadata_csv is not None:
        return records_from_csv(metadata_csv, photos, schema)
    if photos.is_file() and photos.suffix.lower() == ".csv":
        return records_from_csv(photos, photos.parent, schema)
    if (photos / "photos" / "photos.txt").is_file():
        return records_from_street2shop(photos, splits)
    for candidate in (photos / "metadata.csv", photos / "products.csv"):
        if candidate.is_file():
            return records_from_csv(candidate, photos, schema)
    raise DataError(
        f"{photos}: neither a street2shop data set (photos/photos.txt) nor a folder with metadata.csv; "
        "pass --metadata CSV"
    )
