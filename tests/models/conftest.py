import dataclasses

import pytest
import torch

from models.build import build_focus
from models.config import get_preset


@pytest.fixture(scope="session")
def tiny_config():
    return get_preset("tiny")


@pytest.fixture()
def tiny_model(tiny_config):
    torch.manual_seed(0)
    return build_focus(tiny_config).eval()


@pytest.fixture(scope="session")
def tiny_no_clip_config():
    return dataclasses.replace(get_preset("tiny"), with_clip=False)
