"""How long loading + expanding a 10,000-element sweep takes (prints the time; no assertion).

Run: python benchmarks/bench_plan.py
"""

from __future__ import annotations

import time
from pathlib import Path

from mace_hpc.plan import load_plan_data

PLAN = {
    "name": "bench-eos",
    "env": {"OMP_NUM_THREADS": 1},
    "sweep": {
        "parameters": {"a0": [3.9 + 0.003 * i for i in range(100)], "k": list(range(100))},
        "id": "a{index}",
        "template": {
            "materials": [{"material_id": "Al-{index}", "formula": "Al", "space_group": 225}],
            "env": {"A0": "{a0}", "KPTS": "{k}"},
            "steps": [
                {
                    "name": "relax",
                    "command": ["python", "{plan_dir}/relax.py", "--a0", "{a0}", "--out", "{context_dir}"],
                },
                {
                    "name": "eos",
                    "function": "examples.al_eos.eos:energy_point",
                    "kwargs": {"a0": "{a0}", "k": "{k}", "label": "{workflow_id}"},
                    "material_id": "Al-{index}",
                    "timeout": 600,
                },
            ],
        },
    },
}


def main() -> None:
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        plan = load_plan_data(PLAN, plan_dir=Path("/tmp"))
        best = min(best, time.perf_counter() - t0)
    print(
        f"expand {len(plan.elements)} elements: best of 5 = {best * 1000:.1f} ms ({best / len(plan) * 1e6:.1f} us/element)"
    )
    t0 = time.perf_counter()
    data = plan.to_dict()
    t1 = time.perf_counter()
    load_plan_data(data, plan_dir=Path("/tmp"))
    t2 = time.perf_counter()
    print(f"to_dict: {(t1 - t0) * 1000:.1f} ms; reload of the explicit form: {(t2 - t1) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
