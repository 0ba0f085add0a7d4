"""medloop's Streamlit entry: opens the store (upgrading its schema) and routes to the pages."""

import streamlit as st

from store.db import Store


@st.cache_resource
def get_store() -> Store:
    store = Store()
    store.upgrade()
    return store


@st.cache_resource(show_spinner="Loading the foundation model…")
def get_fm():
    """(model, None) or (None, what to do): the app works on without proposals."""
    from pipeline.fm import try_load_foundation_model

    return try_load_foundation_model()


st.set_page_config(page_title="medloop", page_icon="🩻", layout="wide")
st.session_state["store"] = get_store()
fm, fm_problem = get_fm()
st.session_state["fm"] = fm
with st.sidebar:
    if fm is None:
        st.warning(fm_problem)
    else:
        st.caption(f"Proposals by {fm.version} (sha256 {fm.checkpoint_sha256[:12]}…)")
nav = st.navigation([st.Page("pages/dataset.py", title="Dataset", icon="🗂️", default=True)])
nav.run()
