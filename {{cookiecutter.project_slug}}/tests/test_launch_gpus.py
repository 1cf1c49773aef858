"""`modal run --gpu` refuses the GPU types the bake refuses, with the same reason."""

import pytest
from conftest import PROJECT

from {{ cookiecutter.package_name }}.machinery import launch


def any_config() -> str:
    return min((PROJECT / "configs").glob("*.yaml")).relative_to(PROJECT).as_posix()


@pytest.mark.parametrize("gpu", ["T4", "t4:2"])
def test_a_gpu_the_bake_refuses_is_refused_before_any_gpu_time(gpu):
    with pytest.raises(ValueError) as refused:
        launch.validate_request(
            any_config(), gpu=gpu, project=PROJECT, gpus=["L4"], cluster_nodes=0
        )
    assert str(refused.value).startswith(
        f"--gpu {gpu!r} is not supported: T4 is sm_75, which has no bfloat16"
    )
