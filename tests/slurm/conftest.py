"""The tier's cluster: one private one-node Slurm for the session (``private_slurm``), skipped
with the reason where it cannot run (no root, Slurm or munge not installed)."""
import pytest

import private_slurm


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    why_not = private_slurm.why_not()
    if why_not:
        pytest.skip(why_not)
    try:
        cluster, procs = private_slurm.start(tmp_path_factory.mktemp("slurm"))
    except TimeoutError as error:
        pytest.fail(f"the private Slurm cluster did not start: {error}")
    try:
        yield cluster
    finally:
        private_slurm.shut_down(cluster, procs)
