"""The lookserve web page (Streamlit): shop the look and product thumbnails, against Triton.

Start it with ``lookserve ui`` (which runs ``streamlit run`` on this file with the catalog,
Triton URL and samples folder in the environment; see :mod:`lookserve.ui.logic`). The URL
query parameters ``mode`` (look / thumbnails), ``sample`` (a street photo's file name) and
``product`` (a footwear product's folder name) pick a query, so a link shows a result.

All the work is in :mod:`lookserve.ui.logic`; this script only lays it out. Every error
becomes an ``st.error`` naming the problem, never a traceback on the page.
"""

from __future__ import annotations

import logging
import os

import streamlit as st

from lookserve import errors
from lookserve.client.look import LookConfig
from lookserve.logs import setup_logging
from lookserve.ui import logic

log = logging.getLogger("lookserve.ui.app")

_MODE_CAPTIONS = {"look": "shop the look: a street photo → the matching products",
                  "thumbnails": "a shoe's views → its thumbnail and type"}


@st.cache_resource(show_spinner="Connecting to Triton…")
def _services(_config: logic.UiConfig, key: str) -> logic.Services:
    """One connection per configuration (``key``) for every browser session; an exception is
    not cached, so a server that comes up later is found on the next run."""
    log.info("connecting to Triton at %s (%s)", _config.url, key)
    return logic.connect(_config)


@st.cache_resource(show_spinner="Looking for samples…")
def _samples(root: str) -> logic.Samples:
    return logic.find_samples(root or None)


def _setup_logging() -> None:
    try:
        setup_logging(int(os.environ.get(logic.ENV_VERBOSE, "0") or 0))
    except ValueError:
        setup_logging(0)


# ------------------------------------------------------------------------------------------
# Sidebar
# ------------------------------------------------------------------------------------------
def sidebar(config: logic.UiConfig, samples: logic.Samples) -> tuple[str, float, int]:
    with st.sidebar:
        st.title("lookserve")
        # the option strings are what ?mode= carries, so they stay short; the captions explain them
        mode = st.radio("What to try", logic.MODES, key=logic.QUERY_MODE, bind="query-params",
                        captions=[_MODE_CAPTIONS[m] for m in logic.MODES])
        defaults = LookConfig()  # the chain's own defaults (the original's 0.75 and top-6)
        min_score, k = defaults.filter.min_score, defaults.k
        if mode != "thumbnails":
            st.subheader("Shop the look settings")
            min_score = st.slider("Minimum detector score", 0.0, 1.0, min_score, 0.05, key="min_score",
                                  bind="query-params", help="Instances scoring below this are dropped (the original used 0.75).")
            k = st.number_input("Matches per item (top-K)", min_value=1, max_value=20, value=k, step=1, key="k",
                                bind="query-params")
        st.subheader("Where")
        st.caption(f"Triton (gRPC): `{config.url}`")
        st.caption(f"Catalog: `{config.catalog or '—'}`")
        st.caption(f"Samples: `{config.samples or '—'}`")
        for note in samples.notes:
            st.caption(f"⚠ {note}")
        if st.button("Reconnect", help="Forget the connection and the samples and look again."):
            _services.clear()
            _samples.clear()
    return mode or "look", float(min_score), int(k)


# ------------------------------------------------------------------------------------------
# Shop the look
# ------------------------------------------------------------------------------------------
def look_page(config: logic.UiConfig, samples: logic.Samples, services: logic.Services, min_score: float, k: int) -> None:
    st.header("Shop the look")
    if services.look is None:
        st.error(services.look_error or "Shop the look is not available.")
        return
    left, right = st.columns(2)
    choice = left.selectbox("Generated sample", list(samples.street), index=None, key=logic.QUERY_SAMPLE,
                            placeholder="pick a street photo", bind="query-params")
    upload = right.file_uploader("…or upload a street photo (JPEG, PNG, WebP, BMP)", key="look_upload")
    truth = None
    if upload is not None:
        inp = logic.load_input(upload.name, upload.getvalue(), config.limits)
    elif choice:
        inp = logic.load_input(choice, samples.street[choice], config.limits)
        truth = samples.truth.get(choice)
    else:
        st.info("Pick a sample or upload a street photo: the page shows the garments it finds and the catalog "
                "products that match each one.")
        return
    attributes = ", ".join(f"{n} ({t})" for n, t in sorted(logic.catalog_attributes(services.catalog).items())) or "none"
    product_filter = st.text_input("Filter on product attributes", key="product_filter", placeholder="price < 50 and in_stock",
                                   help=f"e.g. price < 50 and brand in [\"a\", \"b\"] and in_stock. Attributes: {attributes}")
    with st.spinner(f"Asking Triton about {inp.name}…"):
        view = logic.run_look(services, inp, min_score=min_score, k=k, truth=truth, catalog_filter=product_filter)
    show_look(view, services.catalog)


def show_look(view: logic.LookView, catalog=None) -> None:
    result = view.result
    photo, facts = st.columns([3, 2])
    photo.image(view.annotated, width="stretch",
                caption=f"{view.input.name} — {result.width}×{result.height}, {len(view.items)} item(s) kept, "
                        f"{len(view.dropped)} dropped")
    with facts:
        st.subheader("Latency per stage (ms)")
        st.markdown(logic.markdown_table(view.timings))
        st.markdown(f"**Models that answered:** {logic.versions_line(view.versions)}")
        if catalog is not None:
            st.caption(logic.catalog_caption(catalog))
    if not view.items:
        st.warning("No garment passed the filters" + (f" ({'; '.join(view.dropped)})" if view.dropped else "")
                   + ". Lower the minimum detector score in the sidebar to see weaker detections.")
    for item in view.items:
        st.markdown(f"### <span style='color:{item.colour}'>■</span> {item.number}. {item.heading}",
                    unsafe_allow_html=True)
        if item.truth_note:
            st.caption(item.truth_note)
        if not item.matches:
            st.caption("The catalog has no products of this category.")
            continue
        columns = st.columns(len(item.matches))
        for column, match in zip(columns, item.matches, strict=True):
            with column:
                if match.photo is not None:
                    st.image(str(match.photo), caption=match.caption, width="stretch")
                else:
                    st.markdown(f"*(no image)*  \n{match.caption}")
                st.caption(f"**{match.title}**" + (f"  \n{match.details}" if match.details else ""))
    if view.dropped:
        with st.expander(f"{len(view.dropped)} detection(s) dropped by the filters"):
            for line in view.dropped:
                st.write(line)


# ------------------------------------------------------------------------------------------
# Thumbnails
# ------------------------------------------------------------------------------------------
def thumbnails_page(config: logic.UiConfig, samples: logic.Samples, services: logic.Services) -> None:
    st.header("Footwear thumbnails")
    if services.thumbnails is None:
        st.error(services.thumbnails_error or "Thumbnails are not available.")
        return
    left, right = st.columns(2)
    choice = left.selectbox("Generated product", list(samples.footwear), index=None, key=logic.QUERY_PRODUCT,
                            placeholder="pick a footwear product", bind="query-params")
    uploads = right.file_uploader("…or upload one product's views (several files)", accept_multiple_files=True,
                                  key="thumb_upload")
    if uploads:
        product = "uploaded product"
        views = [logic.load_input(u.name, u.getvalue(), config.limits) for u in uploads]
    elif choice:
        product = choice
        views = [logic.load_input(p.name, p, config.limits) for p in samples.footwear[choice]]
    else:
        st.info("Pick a product or upload its views: the page picks the best view as the thumbnail and tells the "
                "footwear type.")
        return
    with st.spinner(f"Classifying {len(views)} view(s) of {product}…"):
        view = logic.run_thumbnails(services, product, views)
    show_thumbnails(view)


def show_thumbnails(view: logic.ThumbnailView) -> None:
    result = view.result
    thumb, facts = st.columns([2, 3])
    thumb.image(view.thumbnail.pixels, width="stretch",
                caption=f"thumbnail of {view.product}: {view.thumbnail.name} (best view {result.best_view:.3f})")
    with facts:
        st.metric("Footwear type", result.footwear_type, help="Arg-max of the views' mean type probabilities.")
        st.caption(f"probability {result.type_probability:.3f} (mean over {len(view.ranked)} views)")
        st.markdown(logic.markdown_table(view.type_rows))
        st.subheader("Latency per stage (ms)")
        st.markdown(logic.markdown_table(view.timings))
        st.markdown(f"**Model that answered:** {logic.versions_line(view.versions)}")
    st.subheader("Views ranked by best-view probability")
    columns = st.columns(max(len(view.ranked), 1))
    for column, rank in zip(columns, view.ranked, strict=False):
        column.image(rank.pixels, caption=rank.caption, width="stretch")


# ------------------------------------------------------------------------------------------
def main() -> None:
    st.set_page_config(page_title="lookserve", layout="wide")
    _setup_logging()
    try:
        config = logic.UiConfig.from_env()
    except errors.LookserveError as e:
        st.error(logic.explain(e))
        return
    samples = _samples(str(config.samples or ""))
    mode, min_score, k = sidebar(config, samples)
    try:
        services = _services(config, repr(config))
    except errors.LookserveError as e:
        st.error(logic.explain(e))
        st.caption("Start Triton with `lookserve serve` (or check --url), then press Reconnect in the sidebar.")
        return
    try:
        if mode == "thumbnails":
            thumbnails_page(config, samples, services)
        else:
            look_page(config, samples, services, min_score, k)
    except errors.LookserveError as e:
        log.info("request failed: %s", e)
        st.error(logic.explain(e))
    except Exception as e:  # the page's last line of defence: a message, and the traceback in the log
        log.exception("unexpected error on the page")
        st.error(logic.explain(e))


main()
