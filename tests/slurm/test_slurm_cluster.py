"""The private cluster itself (so that a failure of the training tests is not the cluster's):
a batch job's srun step runs its two tasks and the job completes."""
import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]


def test_a_batch_job_runs_a_two_task_step(slurm_cluster, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n#SBATCH --ntasks=2\nsrun hostname\n")
    out = tmp_path / "job.out"
    job_id = slurm_cluster.sbatch(f"--output={out}", str(script), env=slurm_cluster.env,
                                  cwd=str(tmp_path))
    job = slurm_cluster.wait_for_state(job_id, "COMPLETED", "FAILED", timeout=120)
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), out.read_text()
    assert out.read_text().split() == [slurm_cluster.node] * 2
