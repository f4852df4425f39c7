"""torch.distributed's rendezvous for a run on the local cluster, kept off the network.

Ray Train sets up each run's process group through a TCPStore that rank 0 serves, and torch binds that
server to every interface (`::`) whatever address it is given: the one port of a local cluster that would
listen beyond 127.0.0.1, unauthenticated. On one machine a FileStore does the same job without a socket:
its file lives in the local cluster's 0700 directory (cluster/local.py), where only the user reaches it.
Everything else is Ray's own `_TorchBackend.on_start` (ray==2.60.0 is pinned)."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import ray
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend

STORE_DIR_ENV = "CLS_LOCAL_RAY_DIR"  # set by cluster.local.start for every Ray process of the local cluster


class _FileStoreBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: "FileStoreTorchConfig") -> None:
        # A fresh file per start: a FileStore left by a failed attempt would be joined by the next one.
        url = f"file://{backend_config.store_dir}/torch-store-{uuid.uuid4().hex}"
        worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(i, _setup_torch_process_group, backend=backend_config.backend,
                                                   world_rank=i, world_size=len(worker_group), init_method=url,
                                                   timeout_s=backend_config.timeout_s)
                 for i in range(len(worker_group))])


@dataclass
class FileStoreTorchConfig(TorchConfig):
    store_dir: str = ""

    @property
    def backend_cls(self):
        return _FileStoreBackend


def torch_config(backend: str) -> TorchConfig:
    """The run's TorchConfig: on the local cluster (cluster.local started it: every worker on this machine)
    a FileStore rendezvous in its private directory; on any other cluster Ray's own."""
    store_dir = os.environ.get(STORE_DIR_ENV)
    if store_dir and os.path.isdir(store_dir):
        return FileStoreTorchConfig(backend=backend, store_dir=store_dir)
    return TorchConfig(backend=backend)
