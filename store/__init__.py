"""medloop's store: tables, engine and session, blob store, and every state change.

Nothing here imports Streamlit or any other part of medloop.
"""
