"""Small helpers shared by every stage: errors, seeds, devices, atomic writes, provenance.

torch and numpy are imported by the functions that need them, so that the workflow controller (workflow.py,
which only plans jobs and writes records) uses these helpers without loading torch."""
import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout: modcomp/..


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help of every command: the module docstring as written, and each flag's default (when it has one)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.required:
            return action.help
        return super()._get_help_string(action)


class UserError(Exception):
    """A bad input the user can fix. Stage scripts print it as one line and exit 2."""


def run_main(main):
    """Run a stage's main(); a UserError (or the model file's ModelError) becomes a one-line message and exit
    code 2."""
    try:
        main()
    except Exception as e:
        model_file = sys.modules.get("modeling_moddistilbert")  # self-contained, so it has its own error class
        if not isinstance(e, (UserError, getattr(model_file, "ModelError", UserError))):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def set_seed(seed: int):
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def best_epoch(epochs):
    """The paper's selection, the one rule for every reader of per-epoch scores (finetune.summarize,
    consolidate.select_epoch): the epoch with the highest score, the first of ties; an epoch whose score is
    None or NaN (e.g. constant stsb predictions) is never chosen; None when no epoch has a score."""
    scored = [e for e in epochs if e.get("score") is not None and math.isfinite(e["score"])]
    return max(scored, key=lambda e: e["score"]) if scored else None  # max keeps the first of ties


def get_device(name: str = "auto"):
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@contextlib.contextmanager
def written_atomically(path: str, directory: bool = False):
    """Yield a temporary path beside `path` to write a file (or, with directory=True, a directory) into. When
    the block ends without an error the file is fsynced and renamed over `path` (a directory replaces the old
    one), so readers never see half of it; on an error the temporary is removed. The project's one
    write-then-rename routine: JSON, activation shards, module checkpoints, plots, saved models, checkpoints."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    base = os.path.basename(os.path.normpath(path))
    if directory:
        tmp = tempfile.mkdtemp(dir=d, prefix=".tmp-", suffix=base)
    else:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=base)
        os.close(fd)
    try:
        yield tmp
        if directory:
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
            old = None
            if os.path.isdir(path):
                old = tempfile.mkdtemp(dir=d, prefix=".old-", suffix=base)
                os.replace(path, os.path.join(old, base))
            os.replace(tmp, path)
            if old:
                shutil.rmtree(old, ignore_errors=True)
        else:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, default_file_mode())  # mkstemp makes 0600; give the usual permissions
            os.replace(tmp, path)
    except BaseException:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str, data: bytes):
    """Write `data` to `path` through written_atomically: readers never see half a file."""
    with written_atomically(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def state_dict_sha256(module) -> str:
    """Fingerprint of a model's weights: sha256 over every tensor's name, dtype, shape and bytes, in name order.
    Captures and module checkpoints record their teacher's, so that another teacher is caught, not used."""
    import torch
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """0o666 less the umask: what open() would give a new file."""
    return 0o666 & ~_umask()


def json_safe(obj):
    """obj with every NaN or infinite float (at any depth) replaced by None: JSON has no NaN, only null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: str, obj):
    """Standard JSON (NaN and inf written as null, see json_safe), atomically."""
    text = json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def git_commit(repo_dir=None):
    """`git rev-parse HEAD` of the checkout holding this code (REPO_DIR); None outside a git checkout or
    without git. Never raises."""
    try:
        p = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir or REPO_DIR, capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if p.returncode != 0:
        return None
    return p.stdout.strip() or None


def provenance(device) -> dict:
    """What produced a result: python, torch and transformers versions, the git commit, the device
    ('cpu', or the CUDA device's name)."""
    import torch
    import transformers
    device = torch.device(device)
    name = str(device)
    if device.type == "cuda":
        try:
            name = torch.cuda.get_device_name(device)
        except Exception:  # noqa: BLE001  (provenance never fails a run)
            pass
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "git_commit": git_commit(), "device": name}


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


def cpu_info(cpuinfo_path="/proc/cpuinfo") -> dict:
    """The CPU a speed number comes from: model name, the ISA flags INT8 and fp32 kernels depend on (VNNI and
    AMX make INT8 several times faster), core count, and the kernel level PyTorch picked."""
    model, flags = None, set()
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    import torch
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)()
    return {"cpu": model, "isa": [f for f in ISA_FLAGS if f in flags], "cores": os.cpu_count(),
            "torch_cpu_capability": capability, "torch": torch.__version__}


def cpu_line(info: dict) -> str:
    """One line for tables: 'AMD EPYC, 2 cores, avx2 avx512f avx512_vnni (torch kernels: AVX512)'."""
    isa = " ".join(info["isa"]) or "no AVX2"
    return f"{info['cpu']}, {info['cores']} cores, {isa} (torch kernels: {info['torch_cpu_capability']})"
