"""Speed levers for the scoring step, measured by ``keep bench ranker`` (``model_alone`` per lever).

Each lever turns the float32 eager model into another callable with the same ``Batch → logits``
contract. The bench reports, per lever, samples/s on the same encoded requests and the largest
absolute *probability* difference from the float32 eager model on them. A lever is worth keeping
only when it is faster and that difference is at most :data:`MAX_SCORE_ERROR`; docs/ranker.md records
what was measured, including the levers that were not kept.

- ``eager``: the model as loaded (float32, ``torch.inference_mode``), the reference.
- ``int8_dynamic``: ``torch.ao.quantization.quantize_dynamic`` of every ``nn.Linear`` (int8 weights,
  activations quantized per batch).
- ``compile``: ``torch.compile(dynamic=True)`` (Inductor, C++ codegen on the CPU); the first calls pay
  the compilation, reported as ``compile_s``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ranker.model import Batch, DownstreamModel

MAX_SCORE_ERROR = 1e-3
#: Measured by default. ``compile`` works through :func:`apply` but is left out: on the shared 2-core
#: machine its compilation did not finish within 8 minutes (docs/ranker.md, "Speed levers").
LEVERS = ("eager", "int8_dynamic")

Forward = Callable[[Batch], torch.Tensor]


def apply(model: DownstreamModel, lever: str) -> Forward:
    if lever == "eager":
        return model
    if lever == "int8_dynamic":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notices
            quantized: Forward = torch.ao.quantization.quantize_dynamic(
                model, {torch.nn.Linear}, dtype=torch.qint8
            )
        return quantized
    if lever == "compile":
        compiled: Forward = torch.compile(model, dynamic=True)
        return compiled
    raise ValueError(f"unknown lever {lever!r}; expected eager, int8_dynamic or compile")


def measure(
    model: DownstreamModel,
    batches: Sequence[Batch],
    seconds: float,
    levers: Sequence[str] = LEVERS,
) -> dict[str, dict[str, Any]]:
    """Per lever: ``samples_per_s``, ``ms_per_request``, ``max_abs_score_diff`` vs eager, ``kept``
    candidates (faster than eager and within :data:`MAX_SCORE_ERROR`), or the ``error`` it raised."""
    out: dict[str, dict[str, Any]] = {}
    reference: list[np.ndarray] = []
    for lever in levers:
        try:
            t0 = time.perf_counter()
            forward = apply(model, lever)
            with torch.inference_mode():
                probs = [torch.sigmoid(forward(b)).numpy() for b in batches]  # also warms up / compiles
            setup_s = time.perf_counter() - t0
            n, t0 = 0, time.perf_counter()
            with torch.inference_mode():
                while time.perf_counter() - t0 < seconds:
                    forward(batches[n % len(batches)])
                    n += 1
            elapsed = time.perf_counter() - t0
        except Exception as err:  # a lever that does not work here is a result too
            out[lever] = {"error": f"{type(err).__name__}: {str(err)[:200]}"}
            continue
        if lever == "eager":
            reference = probs
        diff = (
            max(float(np.abs(p - r).max()) for p, r in zip(probs, reference, strict=True))
            if reference
            else 0.0
        )
        candidates = len(batches[0].item)
        out[lever] = {
            "samples_per_s": round(n * candidates / elapsed, 1),
            "ms_per_request": round(elapsed / n * 1000, 3),
            "max_abs_score_diff": diff,
            "setup_s": round(setup_s, 2),
        }
    eager = out.get("eager", {}).get("samples_per_s", 0.0)
    for row in out.values():
        if "samples_per_s" in row:
            row["within_error"] = row["max_abs_score_diff"] <= MAX_SCORE_ERROR
            row["speedup"] = round(row["samples_per_s"] / eager, 3) if eager else None
    return out
