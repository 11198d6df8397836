"""The private cluster itself: a batch job's srun steps run, and a requeue runs the job again."""
import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]


def test_a_batch_job_runs_two_tasks_and_is_requeued(slurm_cluster, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n#SBATCH --ntasks=2\n#SBATCH --requeue\n"
                      "#SBATCH --open-mode=append\n"
                      "echo attempt ${SLURM_RESTART_COUNT:-0}\nsrun -n2 hostname\n"
                      "[ ${SLURM_RESTART_COUNT:-0} -gt 0 ] || sleep 600\n")
    out = tmp_path / "job.out"
    job_id = slurm_cluster.sbatch(f"--output={out}", str(script), env=slurm_cluster.env,
                                  cwd=str(tmp_path))
    slurm_cluster.wait_for_state(job_id, "RUNNING", timeout=120)
    slurm_cluster.run("scontrol", "requeue", str(job_id))
    job = slurm_cluster.wait_for_state(job_id, "COMPLETED", "FAILED", timeout=240)
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "1")
    lines = out.read_text().splitlines()
    assert lines[0] == "attempt 0" and "attempt 1" in lines
    assert lines[lines.index("attempt 1") + 1:] == [slurm_cluster.node] * 2
