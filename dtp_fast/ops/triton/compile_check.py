"""Compile the Triton kernels for a CUDA target without a GPU.

Triton's interpreter (``TRITON_INTERPRET=1``) runs kernels as NumPy code and
misses errors that only the compiler sees (a non-constexpr global, a type
that does not lower, a register blow-up). This compiles every kernel
specialization the ``triton`` backend launches, through ptxas (bundled with
the triton wheel), for one GPU architecture:

    python -m dtp_fast.ops.triton.compile_check            # sm_90, float32 and float64
    python -m dtp_fast.ops.triton.compile_check --quick    # the float32 ELU specializations only
    python -m dtp_fast.ops.triton.compile_check --arch 80

It must run with ``TRITON_INTERPRET`` unset. Exit status 1 if any kernel fails.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def _specializations(quick: bool):
    """(name, kernel, signature, constexprs, options) of every launch variant."""
    from . import chain, dh, noise, sgd, sparse

    ints = lambda *names: {n: "i32" for n in names}  # noqa: E731
    geos = [dict(KH=2, KW=2, SH=2, SW=2, PH=0, PW=0, NH=1, NW=1), dict(KH=3, KW=3, SH=2, SW=2, PH=1, PW=1, NH=2, NW=2)]
    nofma = {"enable_fp_fusion": False}
    for cl in (True, False):
        yield (f"noise CL={cl}", noise._noise_kernel,
               {"OUT": "*fp32", "P": "*fp32", **ints("total", "F", "B", "C", "HW", "it0", "S", "offset", "k0s", "k1s"),
                "CL": "constexpr", "BLOCK": "constexpr"}, {"CL": cl, "BLOCK": 1024}, nofma)
    for dt in (("fp32",) if quick else ("fp32", "fp64")):
        p = f"*{dt}"
        for act in ((1,) if quick else range(4)):
            for geo in geos:
                c = {k: "constexpr" for k in geo}
                yield (f"dh1 {dt} act={act} k={geo['KH']}", dh._dh1_kernel,
                       {"OUT": p, "Z": p, "H0": p, **ints("total", "B", "C", "H", "W", "Hp", "Wp"),
                        **{f"{t}s{i}": "i64" for t in "zh" for i in range(4)}, **c, "ACT": "constexpr",
                        "CL": "constexpr", "BLOCK": "constexpr"}, {**geo, "ACT": act, "CL": True, "BLOCK": 1024}, {})
                for has_eps in (False, True):
                    for pooled in ((True,) if quick else (True, False)):
                        yield (f"dh2 {dt} act={act} k={geo['KH']} eps={has_eps} pool={pooled}", dh._dh2_kernel,
                               {"OUT": p, "Y": p, "I": "*i64" if pooled else p, "H0": p, "EPS": p, "P": p,
                                **ints("total", "B", "C", "H", "W", "Hp", "Wp"),
                                **{f"{t}s{i}": "i64" for t in "yihe" for i in range(4)},
                                **ints("it0", "S", "offset", "k0s", "k1s"), **c, "POOL": "constexpr",
                                "ACT": "constexpr", "CL": "constexpr", "HAS_EPS": "constexpr", "BLOCK": "constexpr"},
                               {**geo, "POOL": pooled, "ACT": act, "CL": True, "HAS_EPS": has_eps, "BLOCK": 1024},
                               nofma)
        yield (f"loss {dt}", chain._loss_kernel, {"PART": p, "R": p, "A": p, "V": p, "P": p, **ints("n_r", "n_v"),
                                                  "BLOCK": "constexpr"}, {"BLOCK": 4096}, {})
        for has_a in (True, False):
            sig = {}
            for s in range(sgd.SLOTS):
                sig.update({f"V{s}": p, f"B{s}": p, f"Q{s}": p, f"A{s}": p, f"P{s}": p, f"n{s}": "i32"})
            sig.update({**ints("e1", "e2", "e3"), "HAS_A": "constexpr", "BLOCK": "constexpr"})
            yield f"momentum {dt} A={has_a}", sgd._momentum_kernel, sig, {"HAS_A": has_a, "BLOCK": 2048}, {}
        wide = dt == "fp32"
        for prec in (("tf32", "ieee") if wide else ("ieee",)):
            for k in ((3,) if quick else (3, 5)):
                geo = dict(KH=k, KW=k, PH=k // 2, PW=k // 2, DH=1, DW=1, SH=2, SWW=2, PREC=prec)
                c = {n: "constexpr" for n in geo}
                plane = ints("NS", "C", "CX", "H", "W", "Hp", "Wp", "HX", "WX")
                yield (f"pooled conv_t {dt} {prec} k={k}", sparse._conv_t_kernel,
                       {"OUT": p, "D2": p, "SW": "*i64", "V": p, "M": "i32", **plane,
                        **{f"vs{i}": "i64" for i in range(4)}, **c, "BM": "constexpr", "BN": "constexpr",
                        "BK": "constexpr"}, {**geo, "BM": 64 if wide else 32, "BN": 64 if wide else 32,
                                             "BK": 32 if wide else 16}, {})
                yield (f"pooled wgrad {dt} {prec} k={k}", sparse._wgrad_kernel,
                       {"PART": p, "D2": p, "SW": "*i64", "DR": p, "P": "i32", "per_part": "i32", **plane,
                        **{f"ds{i}": "i64" for i in range(4)}, **c, "BR": "constexpr", "BN": "constexpr",
                        "BP": "constexpr"}, {**geo, "BR": 64 if wide else 32, "BN": 64 if wide else 32,
                                             "BP": 32 if wide else 16}, {})
        for bj in (16, 64):
            yield (f"linear chain {dt} BJ={bj}", chain._linear_chain_kernel,
                   {"V": p, "BUF": p, "A": p, "C": p, "G": p, "LOSS": p, "P": p,
                    **ints("n_iters", "loss_from", "d_in", "d_out"), "BI": "constexpr", "BJ": "constexpr",
                    "BK": "constexpr"}, {"BI": 16, "BJ": bj, "BK": bj}, {})


def compile_all(arch: int = 90, quick: bool = False, log=print) -> list[tuple[str, str]]:
    """Compile every specialization for ``sm_<arch>``; returns [(name, error)] of the failures."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("compile_check needs TRITON_INTERPRET unset (the interpreter compiles nothing)")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    failures = []
    for name, fn, sig, consts, opts in _specializations(quick):
        t0 = time.perf_counter()
        try:
            triton.compile(ASTSource(fn, sig, constexprs=consts), target=target, options=opts)
            log(f"ok     {name} ({time.perf_counter() - t0:.1f} s)")
        except Exception as err:  # noqa: BLE001 - report every failure
            failures.append((name, f"{type(err).__name__}: {err}"))
            log(f"FAILED {name}: {type(err).__name__}: {str(err)[:500]}")
    return failures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Compile dtp_fast's Triton kernels for a CUDA target, no GPU needed.")
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (default 90: H100/H200)")
    p.add_argument("--quick", action="store_true", help="float32 ELU specializations only")
    args = p.parse_args(argv)
    failures = compile_all(args.arch, args.quick)
    print(f"{'all kernels compiled' if not failures else f'{len(failures)} kernel(s) failed'} for sm_{args.arch}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
