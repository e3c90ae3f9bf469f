"""Training checkpoints: everything needed to continue, written atomically by every rank at once, the last k kept.

A checkpoint is a directory `step-00000123/`:

- model and optimiser state through torch.distributed.checkpoint (DCP): each rank writes its own shards
  (`__<rank>_0.distcp`) in parallel, nothing is gathered; `.metadata` says where every piece lives, so a
  checkpoint written by N processes loads into M (resharded on read);
- `rng-<rank>.safetensors`: each rank's RNG states (tensors, with Python's and NumPy's as JSON metadata);
- `meta.json`: step, stage, data position, data identity, model shape: the small things, as JSON.

Nothing is unpickled on load. DCP's own reader unpickles `.metadata` with plain `pickle.load` and
non-tensor values with `torch.load(weights_only=False)`; here `.metadata` goes through an unpickler that
only builds DCP's metadata classes, and non-tensor values through `torch.load(weights_only=True)`.

Atomicity: every rank writes into one temporary sibling directory; once all have written (agreed by an
all-reduce, so a failure on any rank is seen by all), rank 0 writes `meta.json`, fsyncs and renames the
directory into place. A crash or a full disk mid-write leaves the previous checkpoints untouched.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import random
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path, PosixPath, PurePosixPath
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter, _StorageInfo

PREFIX = "step-"
META = "meta.json"
FORMAT = "ilm-dcp-1"
OLD_FORMAT = "state.pt"


class ResumeError(ValueError):
    """A checkpoint that cannot continue this run."""


# ----------------------------------------------------------------------------- reading DCP without pickle's risks


_DCP_CLASSES = {
    ("torch.distributed.checkpoint.metadata", name): getattr(dcp_metadata, name)
    for name in ("Metadata", "StorageMeta", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                 "TensorProperties", "MetadataIndex", "_MEM_FORMAT_ENCODING")
}
_DCP_CLASSES.update({
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): _StorageInfo,
    ("torch", "Size"): torch.Size,
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
    ("pathlib", "PosixPath"): PosixPath,
    ("pathlib", "PurePosixPath"): PurePosixPath,
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
})


# BUILD (set an object's state) is allowed only on fresh instances of these: never on a class, a function, a
# dtype or an enum member that find_class handed out, which are shared by the whole process.
_BUILDABLE = frozenset({*(getattr(dcp_metadata, n) for n in ("Metadata", "StorageMeta", "TensorStorageMetadata",
                                                            "BytesStorageMetadata", "ChunkStorageMetadata",
                                                            "TensorProperties", "MetadataIndex")),
                        _StorageInfo, __import__("collections").OrderedDict})


class _MetadataUnpickler(pickle._Unpickler):
    """Builds DCP's metadata dataclasses, torch sizes and dtypes, and nothing else (no callables to run).

    The pure-Python unpickler, because its opcodes can be overridden: BUILD on anything but a fresh
    metadata instance is refused, so a refused file cannot have set attributes on an allowed class
    (`PosixPath.__truediv__`) or on `_get_layout`'s cache before it was refused."""

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        found = _DCP_CLASSES.get((module, name))
        if found is not None:
            return found
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")

    def _load_build(self) -> None:
        target = self.stack[-2] if len(self.stack) > 1 else None
        if type(target) not in _BUILDABLE:
            what = target.__name__ if isinstance(target, type) else type(target).__name__
            raise pickle.UnpicklingError(f"refused to set the state of {what} (not a checkpoint metadata object)")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = _load_build


def read_metadata(path: str | Path) -> dcp_metadata.Metadata:
    """The DCP `.metadata` of checkpoint `path`, read with the restricted unpickler; any failure is one
    ResumeError line that names the file."""
    file = Path(path) / ".metadata"
    try:
        with open(file, "rb") as f:
            found = _MetadataUnpickler(f).load()
    except Exception as err:  # noqa: BLE001 (whatever a crafted file raises, the user gets one line)
        detail = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        raise ResumeError(f"{file}: not a readable checkpoint index ({detail})") from None
    if not isinstance(found, dcp_metadata.Metadata) or not isinstance(found.storage_data, dict):
        raise ResumeError(f"{file}: not a checkpoint index (holds {type(found).__name__})")
    if found.storage_meta is None:
        found.storage_meta = dcp_metadata.StorageMeta()
    return found


class _Reader(FileSystemReader):
    """FileSystemReader with the already-validated metadata, and errors that name the files read."""

    def __init__(self, path: Path, metadata: dcp_metadata.Metadata):
        super().__init__(path)
        self._metadata = metadata

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        self._metadata.storage_meta.load_id = self.load_id
        return self._metadata

    def read_data(self, plan, planner):
        try:
            return super().read_data(plan, planner)
        except Exception as err:  # noqa: BLE001 - any failure to decode: name the files
            files = sorted({str(self.storage_data[i.storage_index].relative_path) for i in plan.items})
            raise ResumeError(f"{self.path}: cannot read {', '.join(files)} ({type(err).__name__}: {err})") from None


class _Planner(DefaultLoadPlanner):
    """Non-tensor values (the optimiser's hyper-parameters) through `torch.load(weights_only=True)`."""

    def load_bytes(self, read_item, value) -> None:
        from torch.distributed.checkpoint._nested_dict import set_element

        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


# ----------------------------------------------------------------------------- RNG states, without pickle


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_rng(path: Path) -> None:
    """The tensors (torch, CUDA) as safetensors; Python's and NumPy's generator states as JSON metadata."""
    from safetensors.torch import save

    state = rng_state()
    version, internal, gauss = state["python"]
    name, key, pos, has_gauss, cached = state["numpy"]
    tensors = {"torch": state["torch"], **{f"cuda.{i}": s for i, s in enumerate(state.get("cuda", []))}}
    meta = {"python": json.dumps([version, list(internal), gauss]),
            "numpy": json.dumps([name, key.tolist(), int(pos), int(has_gauss), float(cached)])}
    _write_synced(path, save(tensors, metadata=meta))


def _read_rng(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
        version, internal, gauss = json.loads(meta["python"])
        name, key, pos, has_gauss, cached = json.loads(meta["numpy"])
    except Exception as err:  # noqa: BLE001 - safetensors and JSON raise many kinds on a bad file
        raise ResumeError(f"{path}: not a readable RNG state ({type(err).__name__}: {err})") from None
    cuda = [tensors[f"cuda.{i}"] for i in range(sum(k.startswith("cuda.") for k in tensors))]
    state = {"python": (version, tuple(internal), gauss), "torch": tensors["torch"],
             "numpy": (name, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached)}
    return {**state, "cuda": cuda} if cuda else state


# ----------------------------------------------------------------------------- processes


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def all_ranks_ok(ok: bool) -> bool:
    """True when every rank is ok: a failure on one rank becomes a failure on all (nobody waits forever)."""
    if not dist.is_initialized():
        return ok
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    flag = torch.tensor([1 if ok else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _unwrap(err: BaseException) -> BaseException:
    """DCP reports a failure on any rank as a CheckpointException (a BaseException) holding each rank's
    exception: the first one is the useful one."""
    if isinstance(err, CheckpointException) and err.failures:
        return next(iter(err.failures.values()))[0]
    return err


def _broadcast(value: Any) -> Any:
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def _quiet_single_process():
    """DCP warns on every call without a process group that it assumes one process: that is the intent here."""
    with warnings.catch_warnings():
        if not dist.is_initialized():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


# ----------------------------------------------------------------------------- files


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _json_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"checkpoint metadata holds a {type(value).__name__}, which JSON cannot store")


def _as_json(value: Any) -> Any:
    """What `value` reads back as after a JSON round trip (tuples become lists)."""
    return json.loads(json.dumps(value, default=_json_value))


def _commit(tmp: Path, final: Path, meta: dict[str, Any]) -> None:
    """Rank 0, once every rank has written: meta.json, fsync, rename into place (an old copy survives until then)."""
    _write_synced(tmp / META, (json.dumps(meta, indent=2, default=_json_value) + "\n").encode())
    _fsync_dir(tmp)
    if final.exists():  # the same step written again (a resumed run passing it): swap, never delete first
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def save(
    run_dir: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
    extra: dict[str, Any], keep_last: int = 3,
) -> Path | None:
    """Write checkpoint `step` under `run_dir`, every rank its own shards; returns its path on rank 0.

    `extra` (stage, data position, model shape, ...) must be JSON-serialisable; it comes back from `load`.
    """
    from torch.distributed.checkpoint.state_dict import get_state_dict

    run_dir, rank = Path(run_dir), _rank()
    final = run_dir / f"{PREFIX}{step:08d}"
    meta = {"format": FORMAT, "step": step, "world_size": _world_size(), **_as_json(extra)}
    tmp = None
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=run_dir)
    tmp = Path(_broadcast(tmp))
    error: BaseException | None = None
    try:
        model_state, optim_state = get_state_dict(model, optimizer)  # this rank's shards, no gather
        with _quiet_single_process():
            dcp.save({"model": model_state, "optimizer": optim_state},
                     storage_writer=FileSystemWriter(tmp, sync_files=True))
        _write_rng(tmp / f"rng-{rank:05d}.safetensors")
    except (Exception, CheckpointException) as err:  # noqa: BLE001 - re-raised below, once every rank agreed
        error = _unwrap(err)
    if all_ranks_ok(error is None) and rank == 0:
        try:
            _commit(tmp, final, meta)
        except Exception as err:  # noqa: BLE001 - re-raised below, once every rank agreed
            error = err
    ok = all_ranks_ok(error is None)
    if not ok:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        if error is not None:
            raise error
        raise RuntimeError(f"checkpoint {final} was not written: another rank failed (see its log)")
    if rank != 0:
        return None
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    # an older ilm's checkpoints (state.pt) are listed too, so that resuming names them instead of starting over
    return sorted(p for p in run_dir.iterdir()
                  if p.is_dir() and p.name.startswith(PREFIX) and ((p / META).exists() or (p / OLD_FORMAT).exists()))


def latest(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def read_meta(path: str | Path) -> dict[str, Any]:
    """A checkpoint's meta.json: step, stage, data position, model shape, the world size that wrote it."""
    file = Path(path) / META
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        if (Path(path) / OLD_FORMAT).exists():
            raise ResumeError(f"{path}: written by an older ilm ({OLD_FORMAT}, a pickle this version does not load); "
                              "start a new run_dir or pass --resume never") from None
        raise ResumeError(f"{path}: not a checkpoint (no {META}); checkpoints are the step-* directories of a run") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResumeError(f"{file}: unreadable ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ResumeError(f"{file}: not an {FORMAT} checkpoint (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    return meta


def saved_tensors(path: str | Path) -> dict[str, list[str]]:
    """Names of the saved model and optimiser entries (from DCP's index), e.g. to check a checkpoint's contents."""
    names = list(read_metadata(path).state_dict_metadata)
    return {part: [n[len(part) + 1:] for n in names if n.startswith(part + ".")] for part in ("model", "optimizer")}


def read_model_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The whole model state of a checkpoint as plain CPU tensors, in one process (inspection and tests; a
    training resume uses `load`, which reads each rank's own shards)."""
    metadata = read_metadata(path)
    state = {"model": {n[len("model."):]: torch.empty(m.size, dtype=m.properties.dtype)
                       for n, m in metadata.state_dict_metadata.items()
                       if n.startswith("model.") and isinstance(m, dcp_metadata.TensorStorageMetadata)}}
    with _quiet_single_process():
        dcp.load(state, storage_reader=_Reader(Path(path), metadata), planner=_Planner(), no_dist=True)
    return state["model"]


def load(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_config: dict) -> dict:
    """Restore model, optimiser and RNG from a checkpoint, each rank its own shards (any world size);
    returns the rest of its state (step, stage, data, ...)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    meta = read_meta(path)
    saved, now = meta.get("model_config") or {}, _as_json(model_config)
    diff = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ResumeError(f"{path}: the model changed shape since this checkpoint ({detail}); "
                          "resume with the same model settings or start a new run directory")
    metadata = read_metadata(path)
    model_state, optim_state = get_state_dict(model, optimizer)  # this rank's shards, to be filled in place
    state = {"model": model_state, "optimizer": optim_state}
    with _quiet_single_process():
        try:
            dcp.load(state, storage_reader=_Reader(path, metadata), planner=_Planner())
        except (Exception, CheckpointException) as err:  # noqa: BLE001 - one line naming the checkpoint
            inner = _unwrap(err)
            if isinstance(inner, ResumeError):
                raise inner from None
            raise ResumeError(f"{path}: cannot load ({type(inner).__name__}: {inner})") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    # DCP's load leaves reference cycles holding collective state; freed at interpreter exit, after the
    # process group is gone, they made gloo abort a 2-process resume now and then ("terminate called without
    # an active exception", 2 of 15 runs); collected here, 0 of 30.
    gc.collect()
    mine = path / f"rng-{_rank():05d}.safetensors"
    same_world = meta.get("world_size") == _world_size()
    set_rng_state(_read_rng(mine if same_world and mine.exists() else path / "rng-00000.safetensors"))
    return {k: v for k, v in meta.items() if k not in ("format", "world_size")}
