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
import re
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


def at_least(low, kind=int):
    """An argparse type: a number of `kind` >= low, else argparse's one-line error naming the flag
    ("--batch_size: must be at least 1, not 0"). (predict.py, standalone, has its own copy.)"""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
        if not value >= low:  # NaN too
            raise argparse.ArgumentTypeError(f"must be at least {low:g}, not {text}")
        return value
    return parse


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
    write-then-rename routine: JSON, activation shards, module checkpoints, plots, saved models, checkpoints.

    A directory: its files get the umask's permissions (what open() gives; transformers' save_pretrained writes
    model.safetensors 0600, which other users of a shared directory cannot read); SIGTERM and SIGHUP during the
    block raise (see terminate_raises), so a killed write removes its temporary too; and the temporaries of an
    earlier write of `path` by a process of this machine that is gone (SIGKILL, a crash) are removed first, so
    nothing is left beside `path`. The caller decides whether `path` may be replaced: an existing directory
    there is replaced whatever it holds."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    base = os.path.basename(os.path.normpath(path))
    with terminate_raises() if directory else contextlib.nullcontext(_SIGNALS) as signals:
        if directory:
            remove_stale_temporaries(path)
            tmp = tempfile.mkdtemp(dir=d, prefix=f".tmp-{_writer_tag()}-", suffix=base)
        else:
            fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=base)
            os.close(fd)
        try:
            yield tmp
            if directory:
                _umask_modes(tmp)  # mkdtemp makes 0700, save_pretrained's weights 0600
                with signals.held():  # a signal here waits: `path` is never left moved aside
                    old = None
                    if os.path.isdir(path):
                        old = tempfile.mkdtemp(dir=d, prefix=f".old-{_writer_tag()}-", suffix=base)
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
            with signals.held():  # a second SIGTERM does not cut the cleanup short
                if os.path.isdir(tmp):
                    shutil.rmtree(tmp, ignore_errors=True)
                elif os.path.exists(tmp):
                    os.unlink(tmp)
            raise


def _writer_tag() -> str:
    """PID@host of this process, as the temporaries of written_atomically(directory=True) are named: a later
    write can tell one left by a process that is gone (remove_stale_temporaries)."""
    return f"{os.getpid()}@{_host()}"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", platform.node() or "localhost")


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. PermissionError: it exists, as another user's
        return False
    return False


def remove_stale_temporaries(path: str):
    """Remove the temporaries that written_atomically(path, directory=True) left beside `path` in a process of
    this machine that no longer runs (killed with SIGKILL, out of memory, a power cut): .tmp-PID@HOST-*NAME
    (a half-written directory) and .old-PID@HOST-*NAME (the previous directory, moved aside: put back when
    `path` is missing, i.e. the process died between the two renames). Those of a live process, of another
    machine (a shared file system) or without a PID in their name are left alone."""
    d = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(os.path.normpath(path))
    pattern = re.compile(r"\.(tmp|old)-(\d+)@" + re.escape(_host()) + r"-[a-z0-9_]{8}" + re.escape(base))
    try:
        names = os.listdir(d)
    except OSError:
        return
    for name in sorted(names, key=lambda n: not n.startswith(".old-")):  # restore before the new one is removed
        m = pattern.fullmatch(name)
        full = os.path.join(d, name)
        if not m or int(m.group(2)) == os.getpid() or not _process_gone(int(m.group(2))) or not os.path.isdir(full):
            continue
        if m.group(1) == "old" and not os.path.lexists(path) and os.path.isdir(os.path.join(full, base)):
            os.replace(os.path.join(full, base), path)
        shutil.rmtree(full, ignore_errors=True)


class Terminated(SystemExit):
    """Raised by terminate_raises' handler: the process was asked to stop (SIGTERM, SIGHUP). A SystemExit with
    the shell's status for a signal (128 + its number), so that `finally` and `except BaseException` blocks
    clean up on the way out and no `except Exception` swallows it."""


class _Held:
    """What terminate_raises yields (one for the process): `with signals.held():` defers a signal that arrives
    in the block to its end (a rename pair that must not be cut in two)."""

    def __init__(self):
        self.depth, self.pending = 0, None

    @contextlib.contextmanager
    def held(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if self.pending is not None and not self.depth:
            signum, self.pending = self.pending, None
            raise Terminated(128 + signum)


_SIGNALS = _Held()


@contextlib.contextmanager
def terminate_raises(signals=("SIGTERM", "SIGHUP")):
    """While the block runs, these signals raise Terminated (as SIGINT raises KeyboardInterrupt) where their
    handler is the default one (which kills the process with no cleanup); a handler someone else installed
    (the workflow's, which forwards signals) is left alone, as is everything outside the main thread. Yields a
    _Held: inside `with it.held():` a signal waits for the end of that block."""
    import signal
    import threading
    state = _SIGNALS
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum, frame):
        if state.depth:
            state.pending = signum
        else:
            raise Terminated(128 + signum)

    previous = {}
    for name in signals:
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) == signal.SIG_DFL:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield state
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def _umask_modes(top: str):
    """Give `top`, and every directory and file below it, the permissions a new one gets from the umask
    (0o777 for directories and executables, 0o666 for other files, less the umask)."""
    mask = _umask()
    for root, dirs, files in os.walk(top):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                os.chmod(p, (0o777 if os.stat(p).st_mode & 0o111 else 0o666) & ~mask)


PICKLE_WEIGHTS = ("pytorch_model.bin", "tf_model.h5", "model.ckpt.index", "flax_model.msgpack")


def check_safetensors(path: str):
    """Raise UserError (one line naming `path`) unless `path` is a whole safetensors file: its 8-byte header
    length, its JSON header, and every tensor's bytes inside the file, the data exactly covered (what
    safetensors itself checks when it opens one; a truncated copy or a killed download fails here, not in a
    traceback). The tensor bytes themselves are not read."""
    import struct
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            header = f.read(n) if n is not None and 2 <= n <= size - 8 else None
    except OSError as e:
        raise UserError(f"{path}: cannot be read: {e.strerror or e}") from e
    why = None
    if n is None:
        why = f"{size} bytes, shorter than a safetensors header"
    elif header is None:
        why = f"its header says {n} bytes but the file has {size}: truncated or not a safetensors file"
    else:
        try:
            meta = json.loads(header.decode("utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
            ends = [int(t["data_offsets"][1]) for k, t in meta.items() if k != "__metadata__"]
            begins = [int(t["data_offsets"][0]) for k, t in meta.items() if k != "__metadata__"]
        except (ValueError, KeyError, TypeError, IndexError):
            why = "its header is not safetensors JSON: corrupt, or not a safetensors file"
        else:
            data = size - 8 - n
            if max(ends, default=0) != data or min(begins, default=0) < 0:
                why = (f"its tensors need {max(ends, default=0)} bytes of data but the file has {data}: "
                       + ("truncated" if max(ends, default=0) > data else "corrupt"))
    if why:
        raise UserError(f"{path}: not a whole safetensors file ({why}); write it again")


def model_weights(directory: str) -> list:
    """The safetensors weight files of a saved Hugging Face model directory (model.safetensors, or the shards
    its model.safetensors.index.json names), each checked whole by check_safetensors. UserError (one line)
    when there are none: a directory without weights, or with only a pickle (pytorch_model.bin), which this
    project does not load (unpickling can run code)."""
    single = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{index}: not a safetensors index (no weight_map): {e}") from e
        files = [os.path.join(directory, s) for s in shards]
        missing = [s for s, f in zip(shards, files) if not os.path.isfile(f)]
        if missing:
            raise UserError(f"{index} names shards that are not there: {', '.join(missing)}")
    else:
        others = sorted(n for n in os.listdir(directory) if n in PICKLE_WEIGHTS or n.endswith((".bin", ".pt", ".pth")))
        if others:
            raise UserError(f"{directory}: its weights are {', '.join(others)}, not model.safetensors; this project "
                            "does not load pickles (unpickling can run code). Convert it once, where you trust it: "
                            "from_pretrained(DIR).save_pretrained(DIR) with transformers writes model.safetensors")
        raise UserError(f"{directory}: no model weights (model.safetensors): not a saved model, or its weights "
                        "were not written")
    for f in files:
        check_safetensors(f)
    return files


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
