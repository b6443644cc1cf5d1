"""Process start -> /health ready, in parts (load to ready < 2 s warm is a target, decision 0011).

    .venv/bin/python bench/bench_startup.py [--backend cpu|cuda] [--model PATH|NAME] [--runs 3]
        [--max-batch N] [--compile] [--json OUT.json]

1. The boot's imports: a fresh interpreter imports what `worker-orcd` imports before its
   `startup` line (worker_orcd.cli, worker_orcd.boot, runtime.cli); wall time (median of
   --runs), the packages that cost most (`-X importtime`, self time), and how many of those
   modules Python compiles from source at every start: the ones without an up-to-date cached
   bytecode file while `sys.dont_write_bytecode` is on (PYTHONDONTWRITEBYTECODE, or a
   read-only folder). That compile is most of the import time (4x here); a `pip install`
   byte-compiles what it installs, `pip install --no-compile` does not. `--compile` writes the
   missing bytecode first (py_compile writes whatever the flag says), as an install would.
2. --runs real worker starts (`python -m worker_orcd --port P --backend B --model M`): seconds
   from Popen to the first /health "ready" (polled every 5 ms), and the narrated phases:
   process->startup (interpreter, imports, backend pick), startup->listening,
   listening->model_load_start, model_load_start->model_load_complete (the engine's load beside
   the tokenizer's), model_load_complete->ready. Kernel cache: the first cuda start may compile
   (cold); the later ones are warm. `--max-batch` is passed through (the CUDA engine captures
   one decode graph per slot and split count at load, so 1 vs 16 shows what the slots cost).

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import importlib.util
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BOOT_IMPORTS = "import worker_orcd.cli, worker_orcd.boot, runtime.cli"
PHASE_EVENTS = ("startup", "listening", "model_load_start", "model_load_complete", "ready")

# Run in the fresh interpreter: import the boot path, then list the modules Python had to
# compile from source (no cached bytecode file, or one older than the source).
_PROBE = f"""
import importlib.util, json, os, sys, time
t0 = time.perf_counter()
{BOOT_IMPORTS}
seconds = time.perf_counter() - t0
stale = []
for name, module in list(sys.modules.items()):
    spec = getattr(module, "__spec__", None)
    origin = getattr(spec, "origin", None)
    if not origin or not origin.endswith(".py"):
        continue
    cached = importlib.util.cache_from_source(origin)
    try:
        fresh = os.stat(cached).st_mtime >= os.stat(origin).st_mtime
    except OSError:
        fresh = False
    if not fresh:
        stale.append(origin)
print(json.dumps({{"seconds": seconds, "modules": len(sys.modules), "stale": stale,
                  "dont_write_bytecode": sys.dont_write_bytecode}}))
"""


def _python(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )


def import_probe(runs: int) -> dict:
    """Boot imports in fresh interpreters: wall seconds, modules, which compile every time."""
    samples = [json.loads(_python("-c", _PROBE).stdout) for _ in range(runs)]
    last = samples[-1]
    return {
        "seconds": [round(s["seconds"], 3) for s in samples],
        "modules": last["modules"],
        "compiled_every_start": len(last["stale"]),
        "stale": last["stale"],
        "dont_write_bytecode": last["dont_write_bytecode"],
    }


def import_profile(top: int = 12) -> list[tuple[str, float]]:
    """(top-level package, self milliseconds) of the boot imports, costliest first."""
    err = _python("-X", "importtime", "-c", BOOT_IMPORTS).stderr
    per_package: dict[str, float] = {}
    for line in err.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if m:
            package = m[2].split(".")[0]
            per_package[package] = per_package.get(package, 0.0) + int(m[1]) / 1000
    return sorted(per_package.items(), key=lambda kv: -kv[1])[:top]


def compile_bytecode(paths: list[str]) -> int:
    """Write the bytecode of `paths` (py_compile ignores dont_write_bytecode); how many failed."""
    return sum(not compileall.compile_file(p, quiet=2) for p in paths)


def phases(events: list[dict], popen_wall: float) -> dict[str, float]:
    """Seconds between the narrated start-up events (first of each), from the Popen's time."""
    ts: dict[str, datetime.datetime] = {}
    for event in events:
        if event.get("action") in PHASE_EVENTS and "ts" in event:
            ts.setdefault(event["action"], datetime.datetime.fromisoformat(event["ts"]))
    keys = [k for k in PHASE_EVENTS if k in ts]
    out = {}
    if keys:  # narration timestamps are UTC with milliseconds
        out[f"process->{keys[0]}"] = round(ts[keys[0]].timestamp() - popen_wall, 3)
    for a, b in zip(keys, keys[1:], strict=False):
        out[f"{a}->{b}"] = round((ts[b] - ts[a]).total_seconds(), 3)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _events(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def worker_start(args, index: int, log_dir: Path) -> dict:
    """One worker from Popen to ready, then POST /shutdown; seconds to ready and the phases."""
    import httpx

    port = _free_port()
    cmd = ["-m", "worker_orcd", "--port", str(port), "--backend", args.backend,
           "--worker-id", f"startup-{index}", "--max-batch", str(args.max_batch)]  # fmt: skip
    if args.model:
        cmd += ["--model", args.model]
    log = log_dir / f"worker-startup-{index}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as f:
        wall0, t0 = time.time(), time.perf_counter()
        proc = subprocess.Popen([sys.executable, *cmd], cwd=REPO, env=env,
                                stdin=subprocess.DEVNULL, stdout=f, stderr=f)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    ready = None
    try:
        with httpx.Client(timeout=2.0) as client:
            while time.perf_counter() - t0 < args.timeout:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"worker exited {proc.returncode}:\n{log.read_text()[-3000:]}"
                    )
                try:
                    if client.get(f"{base}/health").json().get("status") == "ready":
                        ready = time.perf_counter() - t0
                        break
                except (httpx.TransportError, ValueError):
                    pass
                time.sleep(0.005)
            if ready is None:
                raise TimeoutError(f"worker not ready in {args.timeout} s")
            client.post(f"{base}/shutdown")
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {"ready_s": round(ready, 3), "phases": phases(_events(log.read_text()), wall0)}


def _median_phases(starts: list[dict]) -> dict[str, float]:
    names = list(starts[-1]["phases"])
    return {
        n: round(statistics.median(s["phases"][n] for s in starts if n in s["phases"]), 3)
        for n in names
    }


def report(res: dict) -> str:
    imp = res["imports"]
    lines = [
        f"# {res['machine']}; backend {res['backend']}, model {res['model']}, "
        f"--max-batch {res['max_batch']}",
        f"boot imports ({BOOT_IMPORTS}): {', '.join(f'{s:.3f}' for s in imp['seconds'])} s; "
        f"{imp['modules']} modules, {imp['compiled_every_start']} of them compiled from source "
        f"at each start (dont_write_bytecode={imp['dont_write_bytecode']})",
        "  self time by package: "
        + ", ".join(f"{name} {ms:.0f}" for name, ms in res["import_profile"])
        + " ms",
    ]
    if "compiled" in res:
        lines.append(f"  --compile: wrote the bytecode of {res['compiled']} modules first")
    for i, s in enumerate(res["starts"], 1):
        lines.append(f"start {i}: ready {s['ready_s']:.3f} s  {s['phases']}")
    readies = [s["ready_s"] for s in res["starts"]]
    lines.append(
        f"load to ready: {', '.join(f'{r:.2f}' for r in readies)} s (median "
        f"{statistics.median(readies):.2f}); median phases {_median_phases(res['starts'])}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--model", help="a GGUF path or catalog name (default: the embedded SmolLM2)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--compile", action="store_true", help="write missing bytecode first")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--json", type=Path)
    p.add_argument(
        "--log-dir", type=Path, default=Path(os.environ.get("OUT") or tempfile.gettempdir())
    )
    args = p.parse_args(argv)
    if importlib.util.find_spec("httpx") is None:
        p.error("needs httpx (pip install -e '.[test]')")
    res: dict = {
        "machine": f"{platform.node()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "backend": args.backend,
        "model": args.model or "embedded SmolLM2",
        "max_batch": args.max_batch,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if args.compile:
        stale = import_probe(1)["stale"]
        res["compiled"] = len(stale) - compile_bytecode(stale)
    res["imports"] = import_probe(args.runs)
    res["import_profile"] = import_profile()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    res["starts"] = [worker_start(args, i, args.log_dir) for i in range(1, args.runs + 1)]
    text = report(res)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({**res, "table": text}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
