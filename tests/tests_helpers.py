"""Small builders shared by test modules."""

from store.projects import create_project


def make_project_simple(store, name="p", modality="MR"):
    with store.session(immediate=True) as s:
        return create_project(s, name, modality,
                              [{"name": "lesion", "value": 1, "color": "#ff0000"}], "test")
