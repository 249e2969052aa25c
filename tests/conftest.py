"""Fixtures shared by test modules in several folders."""

import pytest


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance for the module (each train.py run joins it instead of starting its own); a module
    takes it with ``pytest.mark.usefixtures("ray_cluster")``."""
    import ray

    from temper.cluster import CPU_OVERSUBSCRIPTION
    from temper.cluster.placement import local_resources

    ray.init(num_cpus=local_resources()[1] * CPU_OVERSUBSCRIPTION, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()
