"""Reading weight files safely: safetensors (single or sharded), or .bin/.pt through weights_only unpickling;
writing them so that a failure (a full disk) never leaves a half-written file in place of a good one."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import SafetensorError

from ..errors import OsumError


class WeightError(ValueError, OsumError):
    """Weights that are missing, unreadable, unexpected or the wrong shape; the message names them and the file."""


class WeightWriteError(WeightError):
    """A model file that could not be written (a full disk, a read-only directory); the message names the file
    and the cause, and the file it was to replace is unchanged."""


def read_safetensors(file: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a missing, truncated or corrupt file is a WeightError naming it."""
    from safetensors.torch import load_file

    file = Path(file)
    if not file.is_file():
        raise WeightError(f"weight file not found: {file}")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightError(f"{file}: cannot read it ({err}); the file is probably incomplete (an interrupted copy "
                          "or save): copy it again, or save the model again") from err


def stored_shapes(file: str | Path) -> dict[str, torch.Tensor]:
    """The tensors a safetensors file holds, as meta tensors (names and shapes from its header; nothing read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), "pt") as f:
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightError(f"{file}: cannot read it ({err}); the file is probably incomplete (an interrupted copy "
                          "or save): copy it again, or save the model again") from err


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                       "BOOL": torch.bool}


def copy_stored_into(file: str | Path, targets: dict[str, torch.Tensor]) -> None:
    """Copy each tensor of a safetensors file into the tensor of the same name in `targets` (a model's state dict,
    which shares the model's storage), casting to its dtype (`stored_shapes` + `check_shapes` first).

    Read one tensor at a time with plain reads into a buffer that is freed at once: loading holds the model plus
    its largest tensor. (Mapping the file instead would keep every page read resident in this process, as much
    memory again as the model in the peak resident set.)"""
    import json
    import struct

    try:
        with open(file, "rb") as f, torch.no_grad():
            (header_size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_size))
            start = 8 + header_size
            for key, entry in header.items():
                if key == "__metadata__":
                    continue
                begin, end = entry["data_offsets"]
                f.seek(start + begin)
                data = bytearray(f.read(end - begin))
                if len(data) != end - begin:
                    raise ValueError(f"{key}: the file ends inside it")
                tensor = torch.frombuffer(data, dtype=_SAFETENSORS_DTYPES[entry["dtype"]]) if data else \
                    torch.empty(0, dtype=_SAFETENSORS_DTYPES[entry["dtype"]])
                targets[key].copy_(tensor.reshape(entry["shape"]))
                del data, tensor
    except (OSError, ValueError, KeyError, struct.error) as err:
        raise WeightError(f"{file}: cannot read it ({err}); the file is probably incomplete (an interrupted copy "
                          "or save): copy it again, or save the model again") from err


_OS_ERROR_CODE = re.compile(r"os error (\d+)")  # how safetensors reports an I/O error (it raises no OSError)
_WRITE_CAUSES = {getattr(errno, name): cause for name, cause in (
    ("ENOSPC", "the disk is full"), ("EDQUOT", "the disk quota is used up"), ("EROFS", "the file system is read-only"),
    ("EACCES", "it is not writable (permission denied)"), ("EPERM", "it is not writable (operation not permitted)"))
    if hasattr(errno, name)}


def write_cause(err: BaseException) -> str:
    """Why a write failed, in words (the disk is full, it is not writable), with the system's message."""
    code = getattr(err, "errno", None)
    if code is None:
        found = _OS_ERROR_CODE.search(str(err))
        code = int(found.group(1)) if found else None
    return f"{_WRITE_CAUSES.get(code, 'it could not be written')} ({err})"


def write_error(path: Path, err: BaseException) -> WeightWriteError:
    """The error for a failed write of `path` whose previous version, if any, was kept."""
    return WeightWriteError(f"cannot write {path}: {write_cause(err)}; free space (or choose another output "
                            f"directory) and save again: the previous {Path(path).name}, if any, is unchanged")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _swap_in(tmp: Path, final: Path) -> None:
    """Rename `tmp` over `final` (a directory too: the old one moves aside first, then goes)."""
    if tmp.is_dir() and final.exists():
        old = final.with_name(f".{final.name}.old")
        _remove(old)
        os.replace(final, old)
        os.replace(tmp, final)
        _remove(old)
    else:
        os.replace(tmp, final)


@contextmanager
def staged_writes(directory: str | Path) -> Iterator[Callable[[str], Path]]:
    """Write files (or directories) of `directory` as a unit: `stage(name)` gives a temporary path beside DIR/name
    to write to; when the block ends they are renamed into place, in the order staged. If anything fails, every
    temporary is removed and the old files stay as they were; a failed write (OSError, or safetensors' I/O error)
    is a WeightWriteError naming the file."""
    directory = Path(directory)
    staged: list[tuple[Path, Path]] = []
    current = directory

    def stage(name: str) -> Path:
        nonlocal current
        final = directory / name
        tmp = directory / f".{name}.tmp"
        _remove(tmp)
        staged.append((tmp, final))
        current = final
        return tmp

    try:
        yield stage
        for tmp, final in staged:
            current = final
            _swap_in(tmp, final)
    except BaseException as err:
        for tmp, _ in staged:
            _remove(tmp)
        if isinstance(err, (OSError, SafetensorError)):
            raise write_error(current, err) from err
        raise


def save_safetensors(tensors: dict[str, torch.Tensor], file: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (a temporary name, then renamed over the old file); a failed write is a
    WeightWriteError naming the file, and the old file is left as it was."""
    from safetensors.torch import save_file

    file = Path(file)
    with staged_writes(file.parent) as stage:
        save_file(tensors, str(stage(file.name)), metadata=metadata)


def find_weight_files(path: str | Path) -> list[Path]:
    """The weight files of a Hugging Face style directory, preferring safetensors."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [path / f for f in files]
    if (path / "pytorch_model.bin").is_file():
        return [path / "pytorch_model.bin"]
    raise WeightError(f"{path}: no model.safetensors, sharded index or pytorch_model.bin found")


def load_state_dict_file(file: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of one file; pickles are opened with weights_only=True, never executing code."""
    file = Path(file)
    if not file.is_file():
        raise WeightError(f"weight file not found: {file}")
    if file.suffix == ".safetensors":
        return read_safetensors(file)
    try:
        # mmap: the tensors stay in the file until used, so a checkpoint as large as memory can still be converted
        # (torch's zip format; the older format cannot be mapped and is read whole)
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, wrong formats
        raise WeightError(f"{file}: cannot read weights safely ({err})") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightError(f"{file}: expected a dict of tensors, got {type(state).__name__}")
    return state


def check_shapes(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], where: str) -> None:
    """Same keys and shapes, or a WeightError naming the first differences."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = [f"{k} {tuple(given[k].shape)} != {tuple(expected[k].shape)}"
             for k in expected if k in given and given[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:5])}" + (f" (+{len(missing) - 5})" if len(missing) > 5 else ""))
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:5])}" + (f" (+{len(unexpected) - 5})" if len(unexpected) > 5 else ""))
    if wrong:
        problems.append(f"wrong shape {', '.join(wrong[:5])}")
    if problems:
        raise WeightError(f"{where}: " + "; ".join(problems))
