"""DyNN Explorer: see what a dynamic neural network decides to compute.

Entry point: ``streamlit run app/main.py``. Sets the page, draws the shared input sidebar
and hands over to the page chosen in the navigation.
"""

import streamlit as st

from app import state
from app.inputs import render_input_sidebar
from app.models_cache import use_inference_threads

st.set_page_config(page_title="DyNN Explorer", page_icon=":material/hub:", layout="wide")
use_inference_threads()

PAGES = {
    "Overview": [st.Page("views/overview.py", title="Overview", icon=":material/home:", default=True)],
    "Output-adaptive": [st.Page("views/early_exits.py", title="Early exits", icon=":material/logout:")],
    "Computation-graph-adaptive": [
        st.Page("views/block_skip.py", title="Block skipping", icon=":material/alt_route:"),
        st.Page("views/experts.py", title="Experts", icon=":material/call_split:"),
    ],
    "Input-adaptive": [
        st.Page("views/tokens.py", title="Tokens", icon=":material/grid_view:"),
        st.Page("views/pixels.py", title="Pixels", icon=":material/blur_on:"),
    ],
    "Side by side": [
        st.Page("views/compare.py", title="Compare strategies", icon=":material/compare:"),
        st.Page("views/video.py", title="Video", icon=":material/movie:"),
    ],
}

page = st.navigation(PAGES)
st.session_state[state.PREVIOUS_PAGE] = st.session_state.get(state.PAGE)  # a page can tell a visit from a rerun
st.session_state[state.PAGE] = page.url_path
state.keep_settings()
render_input_sidebar()  # on every page, so the chosen input survives a visit to the Overview
page.run()
