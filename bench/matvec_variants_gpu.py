"""The GPU half of bench_matvec_variants.py: builds, weights, timing, report (needs PyCUDA)."""

from __future__ import annotations

import json
import os
import statistics
import time

import numpy as np
import pycuda.driver as drv
from bench_quant_kernels import time_graph, weight_copies

from cuda import matvec_variants as mvv

PEAK = 4.8e12  # H200 HBM3e bytes/s
#: bytes of other weights read between two uses of one weight copy: twice the 50 MB L2
COLD_BYTES = 100 << 20


def _copies(nbytes: int) -> int:
    """Copies of a matrix to cycle so that each launch finds its weights out of L2."""
    return -(-COLD_BYTES // nbytes) + 1


class _Bench:
    def __init__(self, cases, args):
        from cuda.compile import prefetch
        from cuda.quant_ops import QuantKernels, sources

        t0 = time.perf_counter()
        types = sorted({t for c in cases for t, _ in c.mats})
        # every build at once (nvcc in parallel; a few file reads once cached)
        prefetch([*sources(fast_cvt=False, mr=False), *sources(fast_cvt=True, mr=types)])
        self.builds = {
            "base": QuantKernels(fast_cvt=False, mr=False),
            "cvt": QuantKernels(fast_cvt=True, mr=types),  # nvcc in parallel when not cached
        }
        print(f"builds ready in {time.perf_counter() - t0:.1f} s "
              f"(mr for {', '.join(t.name for t in types)})")  # fmt: skip
        self.args, self.stream = args, drv.Stream()
        self.rng = np.random.default_rng(0)
        widest = max(max(c.cols, c.rows) for c in cases)
        self.x = drv.to_device(self.rng.standard_normal(widest).astype(np.float32))
        self.g = drv.to_device(self.rng.uniform(0.5, 1.5, widest).astype(np.float32))
        self.y = drv.mem_alloc(4 * widest)
        self.bias = drv.to_device(self.rng.standard_normal(widest).astype(np.float32) * 0.1)

    def launcher(self, case, weights, build, variant, *, accumulate, pdl):
        kq, s, c = self.builds[build], self.stream, case.cols
        x, g, y, eps = self.x, self.g, self.y, 1e-6

        def launch(i):
            w = [ws[i % len(ws)] for ws in weights]
            (qtype, rows), *_ = case.mats
            if case.kind == "mv":
                kq.matvec(qtype, w[0], rows, c, x, y, s, accumulate=accumulate, variant=variant,
                          pdl=pdl)  # fmt: skip
            elif case.kind == "norm":
                kq.matvec_norm(qtype, w[0], rows, c, x, g, eps, y, s, accumulate=accumulate,
                               variant=variant, pdl=pdl)  # fmt: skip
            elif case.kind == "glu":
                kq.matvec_norm_glu(qtype, w[0], rows // 2, c, x, g, eps, y, s, act=case.act,
                                   accumulate=accumulate, variant=variant, pdl=pdl)  # fmt: skip
            else:
                segs = [(t, wp, r) for (t, r), wp in zip(case.mats, w, strict=True)]
                kq.matvec_seg(segs, c, x, y, s, norm_w_ptr=g, eps=eps,
                              bias_ptr=self.bias if case.bias else None, accumulate=accumulate,
                              variant=variant, pdl=pdl)  # fmt: skip

        return launch

    def output(self, case, weights, build, variant) -> np.ndarray:
        """One launch without accumulation, on the first weight copy: the output rows."""
        self.launcher(case, weights, build, variant, accumulate=False, pdl=False)(0)
        self.stream.synchronize()
        out = np.empty(case.rows, np.float32)
        drv.memcpy_dtoh(out, self.y)
        return out

    def run_case(self, case, variants) -> list[dict]:
        copies = _copies(case.nbytes)  # each launch a copy; a graph uses every copy
        weights = [weight_copies(t, r, case.cols, self.rng, copies)[0] for t, r in case.mats]
        reps = max(self.args.reps, copies)
        default = mvv.default_variant(case.kind, case.mats[0][0], case.rows, case.cols)
        ref = self.output(case, weights, "base", default)
        scale = max(float(np.abs(ref).max()), 1e-30)
        rows = []
        for label, build, variant in variants(case):
            dev = float(np.abs(self.output(case, weights, build, variant) - ref).max()) / scale
            launch = self.launcher(case, weights, build, variant, accumulate=case.accumulate,
                                   pdl=not self.args.no_pdl)  # fmt: skip
            t = time_graph(self.stream, launch, reps=reps, replays=self.args.replays,
                           stat=statistics.median)  # fmt: skip
            rows.append({"model": case.model, "product": case.product, "kind": case.kind,
                         "types": [q.name for q, _ in case.mats], "rows": case.rows,
                         "cols": case.cols, "bytes": case.nbytes, "count": case.count,
                         "variant": label, "build": build, "us": t * 1e6,
                         "gbps": case.nbytes / t / 1e9, "pct_peak": 100 * case.nbytes / t / PEAK,
                         "deviation": dev, "default": build == "base" and variant == default})  # fmt: skip
        best = min(rows, key=lambda r: r["us"])
        for r in rows:
            r["fastest"] = r is best
        del weights
        return rows


def _report_case(case, rows) -> None:
    print(f"\n{case.label}  {case.nbytes / 1e6:.2f} MB  x{case.count} per step")
    for r in rows:
        mark = "*" if r["fastest"] else ("d" if r["default"] else " ")
        print(f"  {mark} {r['variant']:12s} {r['us']:9.2f} us {r['gbps']:8.0f} GB/s "
              f"{r['pct_peak']:5.1f} %  dev {r['deviation']:.1e}")  # fmt: skip


def _summary(cases, results) -> None:
    print("\nper decode step (products only; d = today's default, * = fastest):")
    models = dict.fromkeys(c.model for c in cases)
    for model in models:
        now = best = 0.0
        for case in (c for c in cases if c.model == model):
            rows = results.get(case.label)
            if not rows:
                continue
            now += next(r["us"] for r in rows if r["default"]) * case.count
            best += min(r["us"] for r in rows) * case.count
        print(f"  {model:8s} today {now:8.1f} us   fastest per product {best:8.1f} us   "
              f"saves {now - best:6.1f} us")  # fmt: skip
    print("\nMATVEC_DEFAULTS entries (cuda/matvec_variants.py) that adopt the fastest: per key, the "
          "variant with the least time summed over the products that share the key (x their "
          "launches per step); a '+cvt' winner means quant_ops.FAST_CVT = True for it:")  # fmt: skip
    by_key: dict[str, list] = {}
    for case in cases:
        if results.get(case.label):
            by_key.setdefault(case.default_key(), []).append(case)
    for key, group in by_key.items():
        totals: dict[str, float] = {}
        for case in group:
            for r in results[case.label]:
                totals[r["variant"]] = totals.get(r["variant"], 0.0) + r["us"] * case.count
        common = [v for v in totals if all(
            any(r["variant"] == v for r in results[c.label]) for c in group)]  # fmt: skip
        win = min(common, key=totals.__getitem__)
        today = next(r["variant"] for r in results[group[0].label] if r["default"])
        own = {c.product: next(r["variant"] for r in results[c.label] if r["fastest"])
               for c in group}  # fmt: skip
        print(f'    "{key}": "{win.removesuffix("+cvt")}",  # {win}: {totals[win]:.1f} us per step '
              f"vs {today} {totals[today]:.1f} ({', '.join(c.model + ' ' + c.product for c in group)}"
              f"{'; own winners ' + str(own) if len(set(own.values())) > 1 else ''})")  # fmt: skip


def run(cases, variants, args) -> None:
    drv.init()
    ctx = drv.Device(0).retain_primary_context()
    ctx.push()
    t0 = time.perf_counter()
    try:
        print(f"device: {drv.Context.get_device().name()}  pdl: {not args.no_pdl}  "
              f"reps {args.reps} x replays {args.replays} (median), weights cycled beyond L2")  # fmt: skip
        bench = _Bench(cases, args)
        t0 = time.perf_counter()  # the budget is for the timings; builds are cached after a run
        results: dict[str, list[dict]] = {}
        for case in cases:
            if time.perf_counter() - t0 > args.budget_s:
                print(f"\nbudget of {args.budget_s:.0f} s spent: skipped {case.label}")
                continue
            results[case.label] = bench.run_case(case, variants)
            _report_case(case, results[case.label])
        _summary(cases, results)
        out = os.environ.get("OUT")
        if out:
            path = os.path.join(out, "matvec_variants.json")
            with open(path, "w") as f:
                json.dump([r for rows in results.values() for r in rows], f, indent=1)
            print(f"\nwrote {path}")
        print(f"timings took {time.perf_counter() - t0:.1f} s")
    finally:
        ctx.pop()
