"""Command line: `python -m ml_backend.jobs annotate|status|cancel`, with a progress bar and a summary."""

from __future__ import annotations

import argparse
import time

from ml_backend.config import settings as default_settings
from ml_backend.jobs.manager import QUEUE_NAME, JobManager
from ml_backend.jobs.spec import AnnotateSpec, JobStatus


def _progress_loop(manager: JobManager, job_id: str, poll_s: float = 1.0) -> JobStatus:
    from tqdm import tqdm

    status = manager.status(job_id)
    assert status is not None
    with tqdm(total=status.total, unit="task", desc=f"job {job_id}") as bar:
        while True:
            status = manager.status(job_id)
            assert status is not None
            bar.n = status.done + len(status.failed)
            bar.set_postfix(img_s=status.images_per_s or 0, failed=len(status.failed))
            bar.refresh()
            if status.state in ("finished", "cancelled"):
                return status
            time.sleep(poll_s)


def _print_summary(status: JobStatus) -> None:
    print(
        f"job {status.job_id}: {status.state}, {status.done}/{status.total} annotated, {len(status.failed)} failed"
    )
    if status.images_per_s:
        print(f"throughput: {status.images_per_s:.2f} images/s")
    for task_id, reason in sorted(status.failed.items()):
        print(f"  task {task_id}: {reason}")


def main(argv: list[str] | None = None) -> int:
    from ml_backend.logs import configure_logging

    parser = argparse.ArgumentParser(
        prog="python -m ml_backend.jobs", description="Auto-annotate Label Studio projects"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    annotate = commands.add_parser(
        "annotate", help="annotate a project (all tasks without this model's prediction)"
    )
    annotate.add_argument("--project", type=int, required=True)
    annotate.add_argument("--task-ids", type=int, nargs="+")
    annotate.add_argument("--model", choices=["grounding_dino", "sam3", "florence2"])
    annotate.add_argument("--prompt")
    annotate.add_argument("--with-masks", action="store_true", default=None)
    annotate.add_argument("--overwrite", action="store_true")
    annotate.add_argument("--polygon-tolerance", type=float, help="fraction of the image diagonal")
    annotate.add_argument("--polygon-max-points", type=int, help="most points per polygon")
    annotate.add_argument(
        "--polygon-min-area", type=float, help="fraction of the image; smaller pieces dropped"
    )
    annotate.add_argument(
        "--no-wait", action="store_true", help="with REDIS_URL: print the job id and return"
    )
    for name in ("status", "cancel"):
        commands.add_parser(name).add_argument("job_id")
    args = parser.parse_args(argv)
    configure_logging("WARNING")

    manager = JobManager(default_settings)
    if args.command == "annotate":
        spec = AnnotateSpec(
            project=args.project,
            task_ids=args.task_ids,
            model=args.model,
            prompt=args.prompt,
            with_masks=args.with_masks,
            overwrite=args.overwrite,
            polygon_tolerance=args.polygon_tolerance,
            polygon_max_points=args.polygon_max_points,
            polygon_min_area=args.polygon_min_area,
        )
        job_id = manager.submit(spec, source="cli")
        if manager.redis is not None:
            print(f"job {job_id} queued on {QUEUE_NAME}")
            if args.no_wait:
                return 0
        status = _progress_loop(manager, job_id)
    else:
        found = manager.status(args.job_id) if args.command == "status" else manager.cancel(args.job_id)
        if found is None:
            print(f"no job {args.job_id}")
            return 1
        status = found
    _print_summary(status)
    return 0 if status.state != "cancelled" else 2
