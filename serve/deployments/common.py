"""What every deployment of the app shares: queue bounds, one thread per replica, the health check."""

from __future__ import annotations

import os

from serve.served import RuntimeCache

# requests each caller (proxy or handle) queues for a deployment beyond its replicas' max_ongoing_requests; more
# are refused at once (RESOURCE_EXHAUSTED) instead of piling up in memory behind a slow or flooded deployment
MAX_QUEUED = {"RecommenderIngress": 256, "RankerDeployment": 256, "EncoderDeployment": 64}


def one_thread() -> None:
    """One intra-op thread per replica (2-core machines slow down ~30x with oversubscription)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def require_loaded(*caches: RuntimeCache) -> None:
    """A deployment's ``check_health``: raise unless each cache holds a loaded bundle version (a replica that
    holds none cannot answer a single call)."""
    for cache in caches:
        if not cache.versions():
            raise RuntimeError("no bundle version is loaded")
