"""EDM snapshot pickles (``network-snapshot-*.pkl``, the NVIDIA CDN files) read without running their code.

An EDM snapshot is ``pickle.dump(dict(ema=net, loss_fn=..., augment_pipe=..., dataset_kwargs=...))`` where every
EDM object is a ``torch_utils.persistence`` record ``{type, version, module_src, class_name, state}``: the plain
loader would ``exec`` ``module_src`` (the whole ``networks.py``) and import EDM's ``torch_utils``. We never do.

:class:`RestrictedUnpickler` resolves only the globals of :data:`ALLOWED_GLOBALS`, each to a function of ours that
checks its arguments and builds plain data: a persistence record becomes a :class:`PersistentRecord` (class name
and attribute dict; ``module_src`` is dropped unread), tensors are rebuilt from storages that ``torch.load`` reads
with ``weights_only=True``. Every other global -- ``os.system``, ``builtins.eval``, ``subprocess.call``, any class --
raises :class:`pickle.UnpicklingError` naming it, before anything is called. :func:`load_edm_pickle` then takes the
``ema`` record, builds *our* :class:`~diractrap.models.edm.EDMPrecond` from its constructor arguments and loads its
tensors with ``strict=True``.
"""

from __future__ import annotations

import collections
import hashlib
import inspect
import io
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from .edm import EDMPrecond, freeze

__all__ = ["load_edm_pickle", "read_edm_pickle", "RestrictedUnpickler", "PersistentRecord", "ALLOWED_GLOBALS"]


# ---------------------------------------------------------------------------------------------------------------
# Plain stand-ins for the objects of a snapshot
# ---------------------------------------------------------------------------------------------------------------


class PersistentRecord:
    """One ``torch_utils.persistence`` object: its class name, version and attribute dict (``state``)."""

    def __init__(self, class_name: str, version, state: dict):
        self.class_name, self.version, self.state = class_name, version, state

    def __setstate__(self, state):
        raise pickle.UnpicklingError("refused: BUILD applied to a persistence record")

    @property
    def init_args(self) -> tuple:
        return tuple(self.state.get("_init_args", ()))

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs", {}))

    def __repr__(self) -> str:
        return f"PersistentRecord({self.class_name!r})"


class ModuleDictRecord:
    """Stand-in for ``torch.nn.ModuleDict``: created empty (NEWOBJ), then given its attribute dict (BUILD)."""

    def __setstate__(self, state):
        if not isinstance(self, ModuleDictRecord) or not isinstance(state, dict):
            raise pickle.UnpicklingError("ModuleDict state must be a dict of attributes")
        self.state = state


def _reconstruct_persistent_obj(meta) -> PersistentRecord:
    """Our handler of ``torch_utils.persistence._reconstruct_persistent_obj``: keep class name and state only."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise pickle.UnpicklingError("unsupported torch_utils.persistence record (expected type 'class')")
    class_name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise pickle.UnpicklingError("persistence record without a class_name string and a state dict")
    return PersistentRecord(class_name, meta.get("version"), state)  # meta["module_src"] is never looked at


# ---------------------------------------------------------------------------------------------------------------
# Tensors: storages through torch.load(weights_only=True), then views rebuilt by our own code
# ---------------------------------------------------------------------------------------------------------------


def _load_storage(data):
    """``torch.storage._load_from_bytes``: the bytes are a torch.save'd storage, read with weights_only=True."""
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("torch.storage._load_from_bytes expects bytes")
    storage = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError(f"storage bytes decoded to {type(storage).__name__}, not a storage")
    return storage


def _is_int_tuple(v) -> bool:
    return isinstance(v, (tuple, list, torch.Size)) and all(isinstance(i, int) for i in v)


def _tensor_view(storage, storage_offset, size, stride, dtype=None) -> torch.Tensor:
    if not isinstance(storage_offset, int) or not _is_int_tuple(size) or not _is_int_tuple(stride):
        raise pickle.UnpicklingError("tensor record with a non-integer offset, size or stride")
    if isinstance(storage, torch.storage.TypedStorage):
        dtype, storage = storage.dtype, storage._untyped_storage
    elif not isinstance(storage, torch.UntypedStorage) or not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError("tensor record without a storage")
    return torch.empty(0, dtype=dtype).set_(storage, storage_offset, tuple(size), tuple(stride))


def _no_hooks(hooks) -> None:
    if hooks is not None and (not isinstance(hooks, dict) or len(hooks)):
        raise pickle.UnpicklingError("tensor record with backward hooks: refused")


def _rebuild_tensor_v1(storage, storage_offset, size, stride):  # torch < 1.0
    return _tensor_view(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    _no_hooks(backward_hooks)
    return _tensor_view(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    _no_hooks(backward_hooks)
    return _tensor_view(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """Parameters come back as plain tensors: only their values are used (loaded into our own modules)."""
    _no_hooks(backward_hooks)
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("parameter record without tensor data")
    return data


# ---------------------------------------------------------------------------------------------------------------
# numpy scalars (np.float64 attributes such as skip_scale) and their dtypes
# ---------------------------------------------------------------------------------------------------------------


def _numpy_dtype(spec, align=False, copy=False):
    if not isinstance(spec, str):
        raise pickle.UnpicklingError("numpy.dtype expects a type string")
    return np.dtype(spec, align=bool(align), copy=bool(copy))


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or not isinstance(data, bytes):
        raise pickle.UnpicklingError(f"numpy scalar of dtype {dtype!r}: only numeric scalars are accepted")
    return np.frombuffer(data, dtype=dtype, count=1)[0].item()


# ---------------------------------------------------------------------------------------------------------------
# The restricted unpickler
# ---------------------------------------------------------------------------------------------------------------

# (module, name) -> what it resolves to; nothing else is ever imported or called
ALLOWED_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor_v1,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.nn.modules.container", "ModuleDict"): ModuleDictRecord,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,  # numpy 1.x, the 2022 snapshots
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,  # numpy 2.x
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "dict"): dict,
}


class _Global:
    """An allowed function as the pickle sees it: callable, but immune to BUILD (which would set its attributes,
    e.g. ``__defaults__``, for the rest of the process)."""

    __slots__ = ("_name", "_func")

    def __init__(self, name, func):
        self._name, self._func = name, func

    def __call__(self, *args, **kwargs):
        return self._func(*args, **kwargs)

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"refused: BUILD applied to the global {self._name}")


class RestrictedUnpickler(pickle.Unpickler):
    """A pickle reader that resolves only :data:`ALLOWED_GLOBALS`; any other global raises naming ``module.name``."""

    def find_class(self, module, name):
        try:
            target = ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: an EDM snapshot needs only persistence records, tensors and "
                "plain containers; this file may carry code, do not load it with pickle") from None
        # classes stay classes (NEWOBJ needs a type; BUILD on them fails: builtins are immutable, ours raise)
        return target if isinstance(target, type) else _Global(f"{module}.{name}", target)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused persistent id: EDM snapshots do not use them")


def read_edm_pickle(path) -> tuple[dict, str]:
    """The snapshot's top-level dict (EDM objects as :class:`PersistentRecord`) and the file's sha256 (hex)."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    with open(path, "rb") as f:
        try:
            data = RestrictedUnpickler(f).load()
        except pickle.UnpicklingError as err:
            raise pickle.UnpicklingError(f"{path}: {err}") from None
        except Exception as err:  # a malformed stream or an allowed function fed wrong arguments
            what = f"{type(err).__name__}: {err}"
            raise pickle.UnpicklingError(f"{path}: not a well-formed EDM snapshot ({what})") from err
    if not isinstance(data, dict):
        raise pickle.UnpicklingError(f"{path}: an EDM snapshot is a dict, got {type(data).__name__}")
    return data, digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# From the `ema` record to our EDMPrecond
# ---------------------------------------------------------------------------------------------------------------


def _record_state_dict(obj, prefix: str = "", out: dict | None = None) -> dict:
    """The state dict of a record tree: parameters, persistent buffers and children, keys joined by dots."""
    out = {} if out is None else out
    state = getattr(obj, "state", {})
    skip = set(state.get("_non_persistent_buffers_set", ()))
    for group in ("_parameters", "_buffers"):
        for name, tensor in (state.get(group) or {}).items():
            if tensor is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(tensor, torch.Tensor):
                raise pickle.UnpicklingError(f"{prefix}{name} is a {type(tensor).__name__}, not a tensor")
            out[prefix + name] = tensor
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, (PersistentRecord, ModuleDictRecord)):
            raise pickle.UnpicklingError(f"submodule {prefix}{name} is a {type(child).__name__}")
        _record_state_dict(child, f"{prefix}{name}.", out)
    return out


def _precond_arguments(record: PersistentRecord) -> dict:
    """EDMPrecond's constructor arguments from the record, positional ones named as in EDM's signature."""
    names = [p for p in inspect.signature(EDMPrecond.__init__).parameters if p != "self"][:8]  # up to model_type
    args = record.init_args
    if len(args) > len(names):
        raise ValueError(f"EDMPrecond record has {len(args)} positional arguments, at most {len(names)} expected")
    return {**dict(zip(names, args)), **record.init_kwargs}


def load_edm_pickle(path, *, device="cpu", class_label: int | None = None) -> EDMPrecond:
    """An EDM snapshot's ``ema`` network as our frozen :class:`EDMPrecond` (a denoiser on [-1, 1]).

    ``path``: an EDM ``.pkl`` (e.g. edm-imagenet-64x64-cond-adm.pkl). Read with :class:`RestrictedUnpickler`: the
    embedded source is never executed and any unexpected global is refused. The network is rebuilt from the
    record's constructor arguments (``model_type`` SongUNet or DhariwalUNet, checked against the stored submodule),
    loaded with ``strict=True`` and returned by :func:`~diractrap.models.edm.freeze`: float32 (the pickle's
    ``use_fp16`` is recorded but ignored: evaluation is always float32), eval mode, frozen, TF32 off, on ``device``.

    ``class_label``: for a class-conditional network (ImageNet-64, 1000 classes), the class used when the caller
    passes no labels. The paper's potential uses each image's own class when the image set provides labels (pass
    them as ``labels=``); ``class_label`` is the configured fixed class otherwise. Without either, a call raises.

    ``info`` records the architecture, the constructor arguments, the source file and its sha256.
    """
    path = Path(path)
    data, sha256 = read_edm_pickle(path)
    ema = data.get("ema")
    if not isinstance(ema, PersistentRecord):
        keys = sorted(map(str, data))
        raise ValueError(f"{path}: no 'ema' network in this pickle (keys: {keys}); is it an EDM snapshot?")
    if ema.class_name != "EDMPrecond":
        raise ValueError(f"{path}: the 'ema' network is a {ema.class_name}; only EDMPrecond snapshots are supported")
    kwargs = _precond_arguments(ema)
    model_type = kwargs.get("model_type", "DhariwalUNet")  # EDM's default
    inner = ema.state.get("_modules", {}).get("model")
    if not isinstance(inner, PersistentRecord) or inner.class_name != model_type:
        found = inner.class_name if isinstance(inner, PersistentRecord) else type(inner).__name__
        raise ValueError(f"{path}: model_type {model_type!r} but the stored network is a {found}")
    try:
        with torch.device("meta"):  # no random initialisation, no memory: the stored tensors are assigned below
            net = EDMPrecond(**kwargs, class_label=class_label)
    except TypeError as err:
        raise ValueError(f"{path}: EDMPrecond arguments {kwargs} do not fit our {model_type}: {err}") from None
    try:
        net.load_state_dict(_record_state_dict(ema), strict=True, assign=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: the stored tensors do not fit the architecture: {err}") from None
    net.info.update(source=os.fspath(path), sha256=sha256)
    return freeze(net, device)
