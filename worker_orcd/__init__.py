"""The entry points: `worker-orcd` (cli), `hypercorn ... worker_orcd.asgi:app` (asgi), one boot.

The only package that may import every other one (runtime, actors, api, cuda): it wires them
into a process. See specs/decisions/0017-entry-package.md.
"""
