"""What made a number: the code, the libraries and the hardware path its arithmetic took.

A result that another machine cannot reproduce bit for bit is still a result; one that
does not say where it came from cannot be checked at all. A seeded single-threaded
run gives the same weights again on one host (``benchmarks/numeric_paths.py``), but
float sums depend on the kernels that computed them, and those are picked per host:

- MKL chooses its matrix-product path by CPU (vendor, generation): on one host,
  another path (``MKL_CBWR=COMPATIBLE``, Intel's "conditional numerical
  reproducibility") moved an MLP's weights by 0.02 in 3 epochs.
- oneDNN picks its convolution kernels, torch its own vectorized kernels, by
  instruction set (``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY`` cap them).
- a thread count, a torch release or a GPU changes the order of sums.

:func:`environment` records all of that with every evaluation (``eval.json``), every
checkpoint and every benchmark's ``results.json``; :func:`differences` says which of
it differs between runs, so a report that compares them can say so. Only the process
that writes a file records itself: a federated site's host is never sent.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# environment variables that choose a numeric path or a thread count
NUMERIC_VARIABLES = ("MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA",
                     "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS",
                     "MKL_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG")
# what changes a number's last digits (the rest, python or platform, only describes)
NUMERIC_KEYS = ("commit", "code", "torch", "kernels", "cpu", "cpu_capability", "threads",
                "device", "numeric_variables")
# the packages whose sources :func:`code_digest` hashes: the app's, as Flower bundles it
CODE_PACKAGES = ("mmvm", "server", "client", "wire", "deploy")


def environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    """The code, libraries and numeric path of this process, computing on ``device``
    (the model's), as a JSON-ready dict.

    Keys: ``mmvm`` (version), ``commit`` (the checkout's git commit, ``+dirty`` when
    tracked files differed from it when first asked; None outside a checkout, e.g. an
    installed app or the app bundle a Flower run executes), ``code``
    (:func:`code_digest`: the same for the same sources, in a checkout or a bundle),
    ``python``, ``platform`` (system and machine: no kernel build),
    ``torch``, ``kernels`` (the MKL and oneDNN releases torch was built with: a pip
    and a conda torch of one version may differ), ``flwr``, ``numpy``, ``cpu`` (model
    name), ``cpu_capability`` (torch's
    SIMD level), ``threads`` (torch's intra-op), ``device`` ("cpu", or the GPU's
    name), ``deterministic`` (torch's flag) and ``numeric_variables`` (those of
    :data:`NUMERIC_VARIABLES` that are set)."""
    import torch

    return {**_static(), "threads": torch.get_num_threads(), "device": _device(device),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "numeric_variables": {k: os.environ[k] for k in NUMERIC_VARIABLES
                                  if k in os.environ}}


@cache
def _static() -> dict[str, Any]:
    """The parts that cannot change while the process lives (read once)."""
    import torch

    return {"mmvm": _version("mmvm"), "commit": git_commit(Path(__file__).parent),
            "code": code_digest(Path(__file__).resolve().parent.parent),
            "python": platform.python_version(),
            "platform": f"{platform.system()} {platform.machine()}",
            "torch": str(torch.__version__), "kernels": _kernels(),
            "flwr": _version("flwr"),
            "numpy": _version("numpy"), "cpu": cpu_model(),
            "cpu_capability": str(torch.backends.cpu.get_cpu_capability())}


def code_digest(root: Path) -> str | None:
    """sha256 of the Python sources of :data:`CODE_PACKAGES` under ``root`` (by path
    relative to it, bytes as stored; ``__pycache__`` aside), None where none is
    there. A federated run executes the app bundle Flower installed, where git
    knows no commit: equal digests say a run and one from a checkout ran the same
    code, whatever packaged it."""
    digest, found = hashlib.sha256(), False
    for package in CODE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            found = True
            digest.update(f"{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest() if found else None


def _kernels() -> str:
    import torch

    return kernels(torch.__config__.show())


def kernels(build: str) -> str:
    """The MKL and oneDNN releases in torch's build configuration text
    (``torch.__config__.show()``), shortened: "MKL 2024.2-Product Build 20240605;
    oneDNN v3.12.0" ("none" without either)."""
    found = []
    for line in build.splitlines():
        line = line.strip(" -")
        if "Math Kernel Library Version" in line:
            found.append("MKL " + line.split("Version", 1)[1].split(" for ")[0].strip())
        elif ("MKL-DNN" in line or "oneDNN" in line) and (
                release := re.search(r"v\d[\w.]*", line)):
            found.append("oneDNN " + release.group())
    return "; ".join(found) or "none"


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a model's weights (``state_dict``, by name, bytes as stored): equal
    for equal weights wherever they were saved, unlike a checkpoint file's, which also
    holds the optimizer, the timings and this environment."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype
    return digest.hexdigest()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _device(device: str | torch.device) -> str:
    """A CUDA device's name (only asked of a process that uses it: asking starts
    CUDA), else the device as torch names it."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return str(device)


def git_commit(folder: Path) -> str | None:
    """The commit of the git checkout whose tracked files ``folder`` holds, with
    ``+dirty`` when they differ from it (benchmark results aside: a benchmark rerun
    into ``benchmarks/results`` changes those, not the code); None when git is
    missing or ``folder`` is not tracked (an installed package inside some other
    repository: a virtual environment in a checkout, a home folder kept in git).
    Without a ``.git`` in ``folder`` or above no git process is started: a site's
    security officer need not find one under an installed package."""
    here = folder.resolve()  # as git finds it: a package linked into a checkout
    if not any((p / ".git").exists() for p in (here, *here.parents)):
        return None

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                                  text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit or not git("ls-files", "--", "."):
        return None
    changed = git("--no-optional-locks", "status", "--porcelain", "--untracked-files=no",
                  "--", ":/", ":(top,exclude)benchmarks/results")
    return commit + ("+dirty" if changed else "")


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo; else the platform's word), so that
    two results say whether they were made on the same kind of CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def differences(envs: Iterable[tuple[str, Mapping[str, Any] | None]]
                ) -> dict[str, dict[str, list[str]]]:
    """Of the :data:`NUMERIC_KEYS`, those whose value differs between the named
    environments (``(name, environment)`` pairs): key -> {value as text: [names]}.
    Names without an environment (older results), or whose environment lacks the key
    (recorded before it was), are left out, not counted as a value, as is an unknown
    commit (an app bundle's: ``code`` compares its sources); commits and code
    digests are shortened to 12 characters."""
    known = [(name, env) for name, env in envs if isinstance(env, Mapping)]
    out: dict[str, dict[str, list[str]]] = {}
    for key in NUMERIC_KEYS:
        values: dict[str, list[str]] = {}
        for name, env in known:
            if key in env and not (key == "commit" and env[key] is None):
                values.setdefault(_text(key, env[key]), []).append(name)
        if len(values) > 1:
            out[key] = values
    return out


def _text(key: str, value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or "none set"
    if key in ("commit", "code") and isinstance(value, str):
        commit, _, dirty = value.partition("+")
        return commit[:12] + (f"+{dirty}" if dirty else "")
    return "unknown" if value is None else str(value)
