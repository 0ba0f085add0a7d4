"""medloop's Streamlit entry: opens the store (upgrading its schema) and routes to the pages."""

import streamlit as st

from store.db import Store


@st.cache_resource
def get_store() -> Store:
    store = Store()
    store.upgrade()
    return store


st.set_page_config(page_title="medloop", page_icon="🩻", layout="wide")
st.session_state["store"] = get_store()
nav = st.navigation([st.Page("pages/dataset.py", title="Dataset", icon="🗂️", default=True)])
nav.run()
