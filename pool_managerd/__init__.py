"""pool-managerd: one process per host that starts, stops and watches worker-orcd processes.

Trio actors under one nursery (see `pool_managerd.pool`): the GPU inventory, the spawner (one
task per worker process), the health poller, the model cache (page-cache preloads) and the
HTTP API (`/v2/*`, `/metrics`) on hypercorn through quart-trio. Requirements: specs/requirements-pool.md.
"""
