"""Dataset: the projects, their items per split, and a thumbnail grid of their images."""

import streamlit as st

if not st.session_state.get("check_session", lambda: False)():
    # Every run checks the server-side session, also when Streamlit runs this file without
    # app.py (it serves pages/ files by URL until the entry script declares its navigation).
    st.session_state["wanted_page"] = "pages/dataset.py"
    st.switch_page("app.py")

from pages._ui import project_picker
from pipeline.imaging import thumbnail
from store import queries
from store.downloads import record_export_download
from store.errors import MedloopError
from store.jobs import queue_export

store = st.session_state["store"]

st.title("Dataset")
with store.session() as s:
    projects = queries.projects(s)
if not projects:
    st.info("No projects yet. Create the demo with `medloop demo`, or import images with "
            "`medloop ingest PATH --project NAME --classes lesion:1`.")
    st.stop()

project = project_picker(store, st.session_state["user"]["id"], projects, "dataset_project")
with store.session() as s:
    splits = queries.split_counts(s, project.id)
    labels = queries.label_counts(s, project.id)
    modalities = queries.modality_counts(s, project.id)

cols = st.columns(5)
cols[0].metric("Items", sum(splits.values()))
cols[1].metric("Train", splits.get("train", 0))
cols[2].metric("Holdout", splits.get("holdout", 0))
cols[3].metric("Test", splits.get("test", 0))
cols[4].metric("Ground truth", labels.get("ground_truth", 0))
st.caption("Modalities: " + (", ".join(f"{m} ({n} items)" for m, n in modalities.items())
                             or "none yet") + " · classes: "
           + ", ".join(f"{c['name']} ({c['value']})" for c in project.label_classes))

with st.expander("Export validated labels"):
    st.caption("Accepted and corrected items as 2D NIfTI image/mask pairs with a manifest "
               "(CSV), built by the worker; follow it on the Jobs page.")
    if st.button("Export now"):
        try:
            with store.session(immediate=True) as s:
                job = queue_export(s, st.session_state["user"]["id"], project.id)
            st.success(f"Export job #{job.id} queued")
        except MedloopError as exc:
            st.error(str(exc))
    exports = sorted((store.settings.data_dir / "exports").glob(f"{project.name}-job*.zip"),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for path in exports[:5]:
        size = path.stat().st_size
        st.download_button(f"Download {path.name} ({size / 1e6:.1f} MB)",
                           data=path.read_bytes, file_name=path.name,  # read on click only
                           mime="application/zip", key=str(path),
                           on_click=record_export_download,  # in the audit log
                           args=(store, st.session_state["user"]["id"], project.id, path.name,
                                 size))

total = sum(splits.values())
per_page = 24
pages = max(1, -(-total // per_page))
page = st.number_input("Page", 1, pages, 1, help=f"{pages} pages of {per_page}") if pages > 1 else 1
with store.session() as s:
    items = queries.items_page(s, project.id, (page - 1) * per_page, per_page)

grid = st.columns(6)
for i, item in enumerate(items):
    where = f"slice {item.slice_index}" if item.slice_index is not None else "image"
    with grid[i % 6]:
        try:
            st.image(thumbnail(store.blobs.get_array(item.blob)), width="stretch")
        except Exception as exc:  # a missing or damaged blob must not take the page down
            st.error(str(exc))
        st.caption(f"#{item.id} · {item.modality} · {where} · {item.split.value}")
