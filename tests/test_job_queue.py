"""The job queue: FIFO on one worker, bounded, per-job interrupt/skip and progress (as the service's
step reporter records them from the pipeline's sampling steps)."""

import threading
import time

import pytest
import torch

from modules.pipeline.progress import SamplingInterrupted, SamplingStep
from modules.service.job_queue import JobCancelled, JobIdInUseError, JobQueue, JobState, QueueFullError
from modules.service.jobs import JobInterrupted
from modules.service.step_reporting import JobStepReporter, PreviewSchedule
from tiny_models import load_tiny_model

NO_PREVIEWS = PreviewSchedule("Approx cheap", 0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_tiny_model(tmp_path_factory.mktemp("model"))


def _step(i: int, total: int) -> SamplingStep:
    return SamplingStep(i, total, torch.zeros(1, 4, 8, 8))


def _blocker():
    """Work that runs until released, so tests control what is running."""
    release = threading.Event()
    started = threading.Event()

    def work(job):
        started.set()
        release.wait(10)
        return "released"

    return work, started, release


def test_jobs_run_in_submission_order_on_one_worker():
    queue = JobQueue()
    order, threads = [], set()

    def work(n):
        def run(job):
            order.append(n)
            threads.add(threading.current_thread().name)
            return n * 10
        return run

    jobs = [queue.submit("test", work(n)) for n in range(20)]
    assert [job.wait(10) for job in jobs] == [n * 10 for n in range(20)]
    assert order == list(range(20))
    assert len(threads) == 1
    assert len({job.id for job in jobs}) == 20


def test_full_queue_refuses_with_retry_after_and_housekeeping_still_passes():
    queue = JobQueue(max_queued=2)
    work, started, release = _blocker()
    running = queue.submit("long", work)
    assert started.wait(5)
    waiting = [queue.submit("next", lambda job: None) for _ in range(2)]
    with pytest.raises(QueueFullError) as refused:
        queue.submit("one too many", lambda job: None)
    assert refused.value.retry_after >= 1
    assert [queue.position(job) for job in waiting] == [1, 2]
    housekeeping = queue.submit("load-model", lambda job: "loaded", bounded=False)
    release.set()
    assert running.wait(5) == "released"
    assert housekeeping.wait(5) == "loaded"


def test_failed_job_reports_its_error_and_the_worker_goes_on():
    queue = JobQueue()

    def fail(job):
        raise ValueError("bad prompt")

    failed = queue.submit("fail", fail)
    after = queue.submit("ok", lambda job: "fine")
    with pytest.raises(ValueError, match="bad prompt"):
        failed.wait(5)
    assert failed.state == JobState.FAILED
    assert after.wait(5) == "fine"


def test_interrupt_stops_at_the_next_step_and_skip_only_the_current_batch(model):
    queue = JobQueue()
    reached = threading.Event()
    log = []

    def sampler_like(job):
        report = JobStepReporter(job, model, NO_PREVIEWS)
        for batch in range(3):
            try:
                for i in range(1000):
                    report(_step(i, 1000))
                    log.append((batch, i))
                    if batch == 0 and i == 2:
                        job.skip()
                    if batch == 1 and i == 4:
                        reached.set()
                        time.sleep(0.2)
            except SamplingInterrupted:
                continue
        return log

    job = queue.submit("gen", sampler_like, job_count=3, steps=1000)
    assert reached.wait(5)
    job.interrupt()
    result = job.wait(5)
    assert max(i for b, i in result if b == 0) == 2  # skipped after step 2 of the first batch
    assert max(i for b, i in result if b == 1) <= 5  # interrupted within a step
    assert not [i for b, i in result if b == 2]  # later batches stop at their first step
    assert job.progress.job_no == 2


def test_progress_fraction_and_eta(model):
    queue = JobQueue()
    seen = {}

    def work(job):
        report = JobStepReporter(job, model, NO_PREVIEWS)
        for i in range(4):
            report(_step(i, 4))
            time.sleep(0.01)
        seen["fraction"] = job.progress.fraction
        seen["eta"] = job.progress.eta()

    queue.submit("gen", work, job_count=2, steps=4).wait(5)
    assert seen["fraction"] == pytest.approx(0.5)
    assert 0 < seen["eta"] < 5


def test_job_ids_are_unique_while_in_use_and_done_callbacks_fire_once():
    queue = JobQueue()
    work, started, release = _blocker()
    job = queue.submit("long", work, job_id="task(mine)")
    with pytest.raises(JobIdInUseError):
        queue.submit("again", lambda j: None, job_id="task(mine)")
    calls = []
    job.add_done_callback(calls.append)
    release.set()
    job.wait(5)
    job.add_done_callback(calls.append)  # already done: called at once
    assert calls == [job, job]
    assert queue.get("task(mine)") is job
    assert queue.submit("again", lambda j: "ok", job_id="task(mine)").wait(5) == "ok"


def test_a_cancelled_queued_job_never_runs_and_its_waiters_get_an_error():
    queue = JobQueue()
    work, started, release = _blocker()
    running = queue.submit("long", work)
    assert started.wait(5)
    ran = []
    dropped = queue.submit("gen", lambda job: ran.append(job.id))
    behind = queue.submit("gen", lambda job: "served")
    notified = []
    dropped.add_done_callback(notified.append)
    assert queue.cancel(dropped, "its client went away")
    assert dropped.done and dropped.state == JobState.CANCELLED and notified == [dropped]
    with pytest.raises(JobCancelled, match="client went away"):
        dropped.wait(0)
    assert queue.pending() == [behind] and queue.position(behind) == 1
    assert queue.get(dropped.id) is dropped  # still answers progress queries by id
    assert not queue.cancel(running, "too late")  # running: only an interrupt stops it
    release.set()
    assert behind.wait(5) == "served" and ran == []
    assert not queue.cancel(behind, "finished")


def test_work_without_steps_stops_when_interrupted_and_its_waiters_are_told():
    queue = JobQueue()
    started, tiles = threading.Event(), []

    def tiles_like(job):
        while True:
            started.set()
            job.check_interrupt()
            tiles.append(len(tiles))
            time.sleep(0.01)

    job = queue.submit("extras", tiles_like)
    assert started.wait(5)
    job.interrupt()
    with pytest.raises(JobInterrupted):
        job.wait(5)
    assert job.state == JobState.FAILED and job.interrupted
    assert queue.submit("next", lambda j: "served").wait(5) == "served"
