"""Every package imports, and importing qwen registers it with the Auto classes."""

import importlib

import pytest
from transformers import AutoConfig

PACKAGES = ["qwen", "visual", "model", "dataset", "dataprocess", "training", "demo", "bench"]


@pytest.mark.parametrize("name", PACKAGES)
def test_package_imports_and_says_what_it_is_for(name):
    module = importlib.import_module(name)
    assert module.__doc__ and module.__doc__.strip(), f"{name}/__init__.py needs its one-line docstring"


def test_qwen_is_registered():
    import qwen

    assert isinstance(AutoConfig.for_model("qwen"), qwen.QWenConfig)
