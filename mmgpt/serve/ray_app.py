"""`mmgpt serve --ray --num-replicas N`: the same app on Ray Serve, one model-owning replica per slot, Ray's router
in front. Each replica builds the FastAPI app of mmgpt.serve.app around its own copy of the model."""
from __future__ import annotations

import logging
import signal
import threading
from typing import Any

logger = logging.getLogger(__name__)


def ray_application(model_path: str, device: str | None, settings: Any, num_replicas: int,
                    cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.0) -> Any:
    """A bound Ray Serve application: `num_replicas` replicas, each loading `model_path` and serving create_app."""
    from ray import serve

    @serve.deployment(name="mmgpt", num_replicas=num_replicas,
                      ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica})
    @serve.ingress()
    class MMGPTReplica:
        def __init__(self, model_path: str, device: str | None, settings: Any) -> None:
            from mmgpt.inference import load_model_or_export

            self.model = load_model_or_export(model_path, device)
            self.settings = settings

        def __serve_build_asgi_app__(self) -> Any:  # noqa: N807 - Ray Serve's hook name
            from mmgpt.serve.app import create_app

            return create_app(self.model, self.settings)

    return MMGPTReplica.bind(model_path, device, settings)


def serve_on_ray(model_path: str, device: str | None, settings: Any, host: str, port: int, num_replicas: int,
                 stop: threading.Event | None = None) -> int:
    """Start a local Ray instance (or join RAY_ADDRESS), deploy, serve until SIGINT/SIGTERM or `stop`, shut down."""
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise OSError(f"--ray needs Ray Serve: pip install 'mmgpt[ray]' ({e})") from e
    stop = stop or threading.Event()
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(ray_application(model_path, device, settings, num_replicas), name="mmgpt", route_prefix="/")
        logger.info("serving %s on Ray Serve with %d replicas at http://%s:%d", settings.model_name, num_replicas,
                    host, port)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        # each replica's app lets its requests in flight finish when Ray shuts it down
        serve.shutdown()
    finally:
        ray.shutdown()
    return 0
