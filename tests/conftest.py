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


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def plots_unrasterized():
    """The module's train.py runs write their closing report (RunLog.close: metrics read, panels built and drawn
    on matplotlib axes, health list, samples, report.html) without rasterizing the figures: each PNG file holds
    the PNG signature alone. That is about 2 s a run on the 2-core CI machine; the pixels are tested in
    tests/observe/test_report_html.py and by test_quickstart_short, which takes the real ``savefig`` this fixture
    returns. A module takes it with ``pytest.mark.usefixtures("plots_unrasterized")``."""
    from pathlib import Path

    from matplotlib.figure import Figure

    def signature_only(self, fname, **kwargs):
        Path(fname).write_bytes(PNG_SIGNATURE)

    real = Figure.savefig
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Figure, "savefig", signature_only)
        yield real
