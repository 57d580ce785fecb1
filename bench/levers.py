"""Speed levers for the scoring step, measured by ``keep bench ranker`` (``model_alone`` per lever).

Each lever turns the float32 eager model into another callable with the same ``Batch → logits``
contract. The bench reports, per lever, samples/s on the same encoded requests (the levers take turns,
round by round, so a change in the machine's load hits all of them alike), the page faults per request
and the largest absolute *probability* difference from the reference. A lever is worth keeping only when
it is faster and that difference is at most :data:`MAX_SCORE_ERROR`; docs/ranker.md records what was
measured, including the levers that were not kept.

- ``reference``: the per-row formula (what training computes), float32: the scoring path before the
  shared-history fast path, and the reference every other lever's score difference is taken against.
- ``eager``: the model as served (float32, ``torch.inference_mode``, the shared-history fast path of
  :meth:`ranker.model.SoftmaxTargetAttention.shared` and :class:`ranker.model.CoAction`).
- ``int8_dynamic``: ``torch.ao.quantization.quantize_dynamic`` of every ``nn.Linear`` (int8 weights,
  activations quantized per batch), on top of ``eager``.
- ``torchscript``: the served default, :mod:`ranker.scripted`'s TorchScript graph of the ``eager``
  path (the same operations in the same order, run without the interpreter lock).
- ``compile``: ``torch.compile(dynamic=True)`` (Inductor, C++ codegen on the CPU); the first calls pay
  the compilation, reported as ``setup_s``. Not measured by default.
"""

from __future__ import annotations

import contextlib
import resource
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ranker import model as model_mod
from ranker import scripted
from ranker.model import Batch, DownstreamModel

MAX_SCORE_ERROR = 1e-3
#: Measured by default. ``compile`` works through :func:`apply` but is left out: on the shared 2-core
#: machine its compilation did not finish within 8 minutes (docs/ranker.md, "Speed levers").
LEVERS = ("reference", "eager", "torchscript", "int8_dynamic")
#: Rounds in which the levers take turns.
ROUNDS = 5

Forward = Callable[[Batch], torch.Tensor]


@contextlib.contextmanager
def fast_path(enabled: bool) -> Iterator[None]:
    """Switch the shared-history fast path for the block (the bench's ``reference`` lever)."""
    before = model_mod.SHARED_HISTORY_FAST_PATH
    model_mod.SHARED_HISTORY_FAST_PATH = enabled
    try:
        yield
    finally:
        model_mod.SHARED_HISTORY_FAST_PATH = before


def apply(model: DownstreamModel, lever: str) -> Forward:
    if lever in ("eager", "reference"):
        return model
    if lever == "int8_dynamic":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notices
            quantized: Forward = torch.ao.quantization.quantize_dynamic(
                model, {torch.nn.Linear}, dtype=torch.qint8
            )
        return quantized
    if lever == "torchscript":
        return _scripted(model)
    if lever == "compile":
        compiled: Forward = torch.compile(model, dynamic=True)
        return compiled
    raise ValueError(
        f"unknown lever {lever!r}; expected reference, eager, torchscript, int8_dynamic or compile"
    )


def _scripted(model: DownstreamModel) -> Forward:
    graph = scripted.script(model)
    name = next(iter(model.cfg.plugins), None)

    def forward(b: Batch) -> torch.Tensor:
        with scripted.run():
            h_m = graph.before(b.user, b.item, b.category, b.shop, b.hist_item, b.hist_category)
            return graph.after(h_m, b.knowledge[name] if name is not None else None)

    return forward


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(
    model: DownstreamModel,
    batches: Sequence[Batch],
    seconds: float,
    levers: Sequence[str] = LEVERS,
) -> dict[str, dict[str, Any]]:
    """Per lever: ``samples_per_s``, ``ms_per_request``, ``faults_per_request``, ``max_abs_score_diff``
    vs ``reference`` (else the first lever), ``speedup`` over it and ``within_error``, or the ``error``
    it raised. ``seconds`` is each lever's share of the time."""
    forwards: dict[str, Forward] = {}
    probs: dict[str, list[np.ndarray]] = {}
    out: dict[str, dict[str, Any]] = {}
    for lever in levers:
        try:
            t0 = time.perf_counter()
            forward = apply(model, lever)
            with torch.inference_mode(), fast_path(lever != "reference"):
                probs[lever] = [torch.sigmoid(forward(b)).numpy() for b in batches]  # warms up / compiles
            forwards[lever] = forward
            out[lever] = {"setup_s": round(time.perf_counter() - t0, 2)}
        except Exception as err:  # a lever that does not work here is a result too
            out[lever] = {"error": f"{type(err).__name__}: {str(err)[:200]}"}
    spent = dict.fromkeys(forwards, 0.0)
    calls = dict.fromkeys(forwards, 0)
    faults = dict.fromkeys(forwards, 0)
    for _ in range(ROUNDS):
        for lever, forward in forwards.items():
            with torch.inference_mode(), fast_path(lever != "reference"):
                f0, t0 = _faults(), time.perf_counter()
                while time.perf_counter() - t0 < seconds / ROUNDS:
                    forward(batches[calls[lever] % len(batches)])
                    calls[lever] += 1
                spent[lever] += time.perf_counter() - t0
                faults[lever] += _faults() - f0
    base = "reference" if "reference" in forwards else next(iter(forwards), None)
    candidates = len(batches[0].item)
    for lever in forwards:
        diff = max(float(np.abs(p - r).max()) for p, r in zip(probs[lever], probs[base], strict=True))  # type: ignore[index]
        out[lever].update(
            samples_per_s=round(calls[lever] * candidates / spent[lever], 1),
            ms_per_request=round(spent[lever] / calls[lever] * 1000, 3),
            faults_per_request=round(faults[lever] / calls[lever], 1),
            max_abs_score_diff=diff,
            within_error=diff <= MAX_SCORE_ERROR,
        )
    ref = out.get(base or "", {}).get("samples_per_s")
    for row in out.values():
        if "samples_per_s" in row and ref:
            row["speedup"] = round(row["samples_per_s"] / ref, 3)
    return out


def user_side_share(model: DownstreamModel, batch: Batch, repeats: int = 50) -> dict[str, float]:
    """What caching the per-user work across requests could save at most: the time of the computations
    that depend on the user alone (history embeddings and mask, their mean, the co-action inputs, the
    user embedding) as a share of the whole forward, on one request."""
    sp = model.sparse

    def user_side() -> None:
        keys, mask = sp.keys(batch)
        m = mask.to(keys.dtype).unsqueeze(-1)
        (keys * m).sum(1) / m.sum(1).clamp(min=1.0)
        model.coaction.inputs(batch.hist_item)
        if sp.user is not None:
            sp.user(batch.user)

    timings = {}
    with torch.inference_mode():
        for name, fn in (("user_side", user_side), ("forward", lambda: model(batch))):
            fn()
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t0)
            timings[name] = best
    return {
        "user_side_ms": round(timings["user_side"] * 1000, 4),
        "forward_ms": round(timings["forward"] * 1000, 3),
        "user_side_share": round(timings["user_side"] / timings["forward"], 4),
    }


def micro_batch_bound(
    score: Callable[[Any], Any], single: Any, double: Any, rounds: int = 40
) -> dict[str, float]:
    """What micro-batching concurrent requests could save at most: ``score(double)`` (one request of
    twice the candidates, the same user: the best case, since requests of different users do not share
    the history GEMM) against ``score(single)`` twice, taking turns; medians and their ratio (< 1: the
    batched call is cheaper)."""
    pair, joint = [], []
    for _ in range(3):
        score(single), score(double)
    for _ in range(rounds):
        t0 = time.perf_counter()
        score(single)
        score(single)
        pair.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        score(double)
        joint.append(time.perf_counter() - t0)
        time.sleep(0.002)
    two, one = float(np.median(pair)), float(np.median(joint))
    return {
        "two_requests_ms": round(two * 1000, 3),
        "one_double_request_ms": round(one * 1000, 3),
        "ratio": round(one / two, 3),
    }
