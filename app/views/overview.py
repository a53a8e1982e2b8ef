"""Overview: what dynamic neural networks are, the survey's taxonomy, and where each lives."""

import streamlit as st

from app.models_cache import load_model
from models import available, model_class

TAXONOMY = {
    "output": (
        "Output-adaptive",
        "Decide *how much* to compute from what the network has seen so far: early exits stop "
        "the forward pass once an intermediate classifier is confident (BranchyNet, SDN, MSDNet).",
    ),
    "graph": (
        "Computation-graph-adaptive",
        "Change *which path* runs: skip residual blocks (SkipNet, ConvNet-AIG, BlockDrop) or route "
        "tokens to a few experts out of many (mixture of experts, V-MoE).",
    ),
    "input": (
        "Input-adaptive",
        "Compute only on the *informative parts* of the input: keep, prune or merge tokens "
        "(DynamicViT, EViT, ToMe) or compute only some pixels (SACT, DynConv).",
    ),
}
PAGE_OF = {"early_exit": "views/early_exits.py", "block_skip": "views/block_skip.py", "vit_tokens": "views/tokens.py",
           "pixel_mask": "views/pixels.py"}  # fmt: skip
# a model whose mechanisms span two families also has a page in the other one
ALSO_IN = {"graph": [("vit_tokens", "views/experts.py", "its mixture-of-experts layers")]}

st.title("DyNN Explorer")
st.markdown(
    "Static networks spend the same compute on every input. **Dynamic neural networks** spend "
    "less on easy inputs and more on hard ones. Pick an image in the sidebar of any view, move "
    "the knobs, and watch what the network decides to compute, what it costs (FLOPs counted on "
    "the forward pass that ran, and measured latency) and what it does to accuracy on the "
    "CIFAR-10 test set."
)
st.caption(
    "Taxonomy after Montello et al., *A Survey on Dynamic Neural Networks: from Computer Vision to "
    "Multi-modal Sensor Fusion* (2025, arXiv:2501.07451)."
)

for category, (title, text) in TAXONOMY.items():
    with st.container(border=True):
        st.subheader(title)
        st.markdown(text)
        names = [n for n in available() if model_class(n).category == category]
        also = [entry for entry in ALSO_IN.get(category, []) if entry[0] in available()]
        if not names and not also:
            st.caption("No model of this family in the app yet.")
        for name in names:
            model = load_model(name)  # the pages' own instance, built once per process (not on every rerun)
            acc = model.card.meta.get("test_accuracy")
            summary = f"{model.title} — {model.full_flops / 1e6:.0f} MFLOPs when static"
            if acc is not None:
                summary += f", {100 * acc:.2f}% top-1 on the CIFAR-10 test set"
            if name in PAGE_OF:
                st.page_link(PAGE_OF[name], label=summary, icon=":material/arrow_forward:")
            else:
                st.markdown(f"- {summary}")
        for name, page, what in also:
            st.page_link(page, label=f"{model_class(name).title} — {what}", icon=":material/arrow_forward:")

with st.container(border=True):
    st.subheader("Side by side")
    st.markdown(
        "Put strategies next to each other on one image, at one compute budget, or run any of them over the "
        "frames of a video."
    )
    st.page_link("views/compare.py", label="Compare strategies", icon=":material/arrow_forward:")
    st.page_link("views/video.py", label="Video: dynamic inference frame by frame", icon=":material/arrow_forward:")
