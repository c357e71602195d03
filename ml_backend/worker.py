"""RunPod serverless front ("OD annotation worker").

`python -m ml_backend.worker` runs the serverless job loop when deployed (RUNPOD_WEBHOOK_GET_JOB
set by the platform) and otherwise serves the SDK's local test API on port 8000, so
`curl -X POST http://localhost:8000/runsync -H "Content-Type: application/json" -d '{"input": ...}'`
answers. Bad input returns `{"error": "<string>"}` (FAILED with that message); unexpected failures
raise so the traceback reaches the job result.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from typing import Any

from ml_backend.config import settings
from ml_backend.engine import Engine, ResourceError
from ml_backend.logs import configure_logging, configure_runpod_logging
from ml_backend.schemas import RequestError, parse_request

log = logging.getLogger(__name__)
MAX_OUTPUT_BYTES = 19 * 1024 * 1024  # RunPod rejects results near 20 MB and the SDK only logs it

_engine: Engine | None = None
_engine_lock = threading.Lock()


def get_engine() -> Engine:
    global _engine
    if _engine is None:
        with _engine_lock:
            if _engine is None:
                _engine = Engine(settings)
    return _engine


def handler(job: dict[str, Any]) -> dict[str, Any]:
    try:
        request = parse_request(job.get("input"))
        response = get_engine().run(request)
    except (RequestError, ResourceError) as error:
        log.info("job %s rejected: %s", job.get("id"), error)
        return {"error": str(error)}
    output = response.model_dump(mode="json", exclude_none=True)
    size = len(json.dumps(output))
    if size > MAX_OUTPUT_BYTES:
        return {
            "error": f"result is {size} bytes, over RunPod's 20 MB limit: send fewer images per batch, "
            "lower max_detections, or use mask_format=polygons"
        }
    return output


def is_deployed() -> bool:
    return bool(os.environ.get("RUNPOD_WEBHOOK_GET_JOB"))


def sdk_arguments(argv: list[str], deployed: bool) -> list[str]:
    """Outside RunPod, default to the local test API (`--rp_serve_api`) unless a mode was chosen."""
    if deployed or "--rp_serve_api" in argv or "--test_input" in argv:
        return argv
    return ["--rp_serve_api", *argv]


def main() -> None:
    configure_logging(settings.log_level)
    serving = get_engine().describe()  # resolves the device: DEVICE=cuda without a usable GPU stops here
    log.info("OD annotation worker on device %s, dtype %s", serving["device"], serving["dtype"])
    configure_runpod_logging(settings.log_level)
    if settings.preload_models:
        get_engine().registry.preload(settings.preload_models)
    import runpod

    sys.argv = [sys.argv[0], *sdk_arguments(sys.argv[1:], is_deployed())]
    runpod.serverless.start({"handler": handler})


if __name__ == "__main__":
    main()
