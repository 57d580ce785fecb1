"""The extractor checkpoint directory: what ``keep pretrain`` writes and everything else reads.

Layout::

    config.json      contract.extractor.CheckpointConfig: the extractor, its training, its days
    vocabs/          contract.ids.Vocabs — raw id → row for user, item, category, shop: one
                     {user,item,category,shop}.npy of keys each, memory-mapped on load
                     (checkpoints of older versions have vocabs.json instead; both load)
    checkpoint.pt    {"model": dense parameters, "optimizer": {"dense": ...}, "progress": {...},
                     "shards": {"dir", "sizes"}}, written by rank 0 once every rank has written
    shards/<tag>/    the id tables and their optimizer state in per-rank pieces (trainer.shard_files);
                     :func:`load_state` gives the dense extractor's layout (tables under
                     ``embeddings.<table>.weight``, see :mod:`trainer.sharded`). Older checkpoints
                     with the tables gathered into checkpoint.pt, and those of the dense-Adam trainer
                     (``optimizer`` = one Adam state dict, export only), still load
    progress.json    the same progress pointer, readable: state, days, batches done / total
    metrics.json     per-task GAUC on the held-out day(s) (written when the run completes)

``checkpoint.pt`` holds the dense weights, the optimizer state, the progress pointer and the name of
its table pieces in one file that is replaced atomically (write to a temporary name, then
``os.replace``) after the pieces are written, so a run killed at any moment leaves either the previous
consistent checkpoint or the new one, never a model from one step with the pointer of another.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from contract.extractor import CheckpointConfig, ExtractorConfig
from contract.ids import RESERVED, Vocab, Vocabs
from services.errors import InvalidArgument, NotFound
from trainer.models.extractor import Extractor
from trainer.models.strategies import build_extractor
from trainer.models.tables import CANONICAL, TABLES, from_canonical, table_key
from trainer.shard_files import read_pieces, readable, remove_others

CONFIG = "config.json"
VOCABS = "vocabs"
#: The vocabularies of checkpoints written before they became ``.npy`` arrays.
VOCABS_JSON = "vocabs.json"
STATE = "checkpoint.pt"
PROGRESS = "progress.json"
METRICS = "metrics.json"


class CheckpointError(InvalidArgument):
    """A checkpoint directory that is missing, incomplete or does not fit the request."""


def require_sharded_state(path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` if it was written by the sharded trainer, else the one-line error naming the fix."""
    optimizer = state.get("optimizer")
    if not (isinstance(optimizer, dict) and "sparse" in optimizer and "dense" in optimizer):
        raise CheckpointError(
            f"{path}: written by the dense-Adam trainer (before TorchRec tables); keep export still reads "
            "it, but it cannot be resumed or continued: pre-train a new run (keep pretrain --out NEW_DIR)"
        )
    return state


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_jsonable))
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise NotFound(f"{path}: missing (not an extractor checkpoint?)") from err
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not JSON ({err})") from err


def save_state(out: Path, state: dict[str, Any], progress: dict[str, Any]) -> None:
    """Write ``checkpoint.pt`` from rank 0's part of :func:`trainer.sharded.checkpoint_state` (the
    pieces already written), then drop the pieces of earlier checkpoints."""
    tmp = out / f".{STATE}.tmp-{os.getpid()}"
    torch.save({**state, "progress": progress}, tmp)
    os.replace(tmp, out / STATE)
    if "shards" in state:
        remove_others(out, Path(state["shards"]["dir"]).name)
    write_json(out / PROGRESS, progress)


def load_state(out: Path, *, mmap: bool = False, pieces: bool = False) -> dict[str, Any]:
    """``checkpoint.pt`` with its tables: whole tensors, or with ``pieces`` as
    :class:`~trainer.shard_files.PiecedTable` (a resuming rank reads only its own regions). ``mmap``:
    tensors memory-mapped (table pieces always are)."""
    file = out / STATE
    if not file.is_file():
        raise NotFound(f"{file}: missing (the run never reached its first checkpoint?)")
    try:
        state: dict[str, Any] = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
        meta = state.pop("shards", None)
        tables = read_pieces(out, meta) if meta is not None else {}
    except (RuntimeError, OSError, EOFError) as err:
        raise CheckpointError(f"{file}: unreadable ({err})") from err
    if meta is not None:
        sparse: dict[str, dict[str, Any]] = {}
        for name, table in tables.items():
            value = table if pieces else table.whole()
            kind, key, *rest = name.split("/", 2)
            if kind == "model":
                state["model"][key] = value
            else:
                sparse.setdefault(key, {})[rest[0]] = value
        state["optimizer"]["sparse"] = sparse
    return state


def load_vocabs(root: Path) -> Vocabs:
    """``root/vocabs/`` (memory-mapped ``.npy`` keys), else an older checkpoint's ``vocabs.json``."""
    if (root / VOCABS).is_dir():
        return Vocabs.load(root / VOCABS)
    if (root / VOCABS_JSON).is_file():
        return Vocabs.from_json(read_json(root / VOCABS_JSON))
    raise NotFound(f"{root / VOCABS}: missing (not an extractor checkpoint?)")


@dataclass
class SavedRun:
    """What a run's checkpoint says about it, without building the model (a resume or continuation
    shards the tables straight from the checkpoint; no process needs them whole)."""

    path: Path
    config: CheckpointConfig
    vocabs: Vocabs
    progress: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def window(self) -> tuple[int, int]:
        """First and last super-domain day the extractor has been trained on (inclusive)."""
        return self.config.window


@dataclass
class LoadedExtractor(SavedRun):
    """An extractor restored for inference: the run plus its module (eval mode)."""

    model: Extractor
    #: ``[lo, hi)``: this module holds the users at those positions of the run's user vocabulary alone,
    #: and ``vocabs.user`` is theirs (the user at ``lo + k`` is row ``RESERVED + k`` of both; every
    #: other user is OOV); ``None``: all of them.
    user_positions: tuple[int, int] | None = None

    @property
    def strategy(self) -> str:
        return self.model.cfg.strategy


def load_run(path: str | os.PathLike[str]) -> SavedRun:
    root = _root(path)
    config = _config(root)
    progress = load_state(root, mmap=True, pieces=True)["progress"]
    return SavedRun(root, config, load_vocabs(root), dict(progress), _metrics(root))


def _root(path: str | os.PathLike[str]) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise NotFound(f"{root}: no such extractor checkpoint directory")
    return root


def _metrics(root: Path) -> dict[str, Any]:
    file = root / METRICS
    return read_json(file) if file.is_file() else {}


def _config(root: Path) -> CheckpointConfig:
    try:
        return CheckpointConfig.from_json(read_json(root / CONFIG), source=str(root / CONFIG))
    except InvalidArgument as err:
        raise CheckpointError(str(err)) from err


def inference_model(
    cfg: ExtractorConfig, model_state: dict[str, Any], user_rows: tuple[int, int] | None = None
) -> Extractor:
    """The extractor for inference (eval mode, no gradients) from a checkpoint's ``model`` state whose
    tables are whole tensors or :class:`~trainer.shard_files.PiecedTable`s; ``user_rows``: hold only
    those ``[lo, hi)`` rows of the user table (its lookups then take ``row - lo``).

    The tables are never allocated twice: the module is built with its tables on ``meta`` (no random
    initial values) and each table is :func:`~trainer.shard_files.readable`: a table kept in one piece
    is read memory-mapped (no copy), one split across ranks is copied once, a block of rows at a time.
    No optimizer state is read. Building the module with random tables and then copying the loaded ones
    in held about twice the tables (three times with the whole tensors read from the pieces)."""
    model = build_extractor(cfg, materialize=False)
    tables = {table_key(name): name for name in TABLES}
    dense = {k: v for k, v in model_state.items() if k not in tables}
    missing, unexpected = model.load_state_dict(from_canonical(dense), strict=False)
    absent = sorted(set(tables) - set(model_state))
    wrong = sorted(set(missing) - {CANONICAL[k] for k in tables})  # the tables are set below
    if absent or wrong or unexpected:
        raise CheckpointError(
            f"checkpoint state does not fit the extractor: missing {absent + wrong}, unexpected {unexpected}"
        )
    for key, name in tables.items():
        rows = user_rows if name == "user" else None
        model.embeddings.set_table(name, readable(model_state[key], rows), window=rows is not None)
    unset = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if unset:
        raise CheckpointError(f"checkpoint state leaves {unset} without values")
    model.requires_grad_(False)
    return model.eval()


def load_extractor(
    path: str | os.PathLike[str], user_part: Callable[[int], tuple[int, int]] | None = None
) -> LoadedExtractor:
    """Load a checkpoint directory written by ``keep pretrain`` (complete or not) for inference: the
    tables memory-mapped where the checkpoint allows (:func:`inference_model`).

    ``user_part``: given the number of users, the ``[lo, hi)`` of their positions this process needs;
    only those rows of the user table are read (an export by user range: a rank of ``keep export
    --gkc-redis`` holds its part of the table, not all of it)."""
    root = _root(path)
    config = _config(root)
    state = load_state(root, mmap=True, pieces=True)
    vocabs = load_vocabs(root)
    positions = user_part(len(vocabs.user.keys)) if user_part is not None else None
    rows = None
    if positions is not None:  # the range's vocabulary (a hash of its keys alone) and rows
        lo, hi = positions
        vocabs = replace(vocabs, user=Vocab(keys=vocabs.user.keys[lo:hi]))
        # table rows [lo, RESERVED + hi): the range's users behind RESERVED rows never looked up
        rows = (lo, RESERVED + hi)
    return LoadedExtractor(
        path=root,
        model=inference_model(config.extractor, state["model"], rows),
        vocabs=vocabs,
        config=config,
        progress=dict(state["progress"]),
        metrics=_metrics(root),
        user_positions=positions,
    )
