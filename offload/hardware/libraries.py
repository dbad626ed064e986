"""Find the shared libraries the GPU backends need, the way a user's machine actually has them installed.

Order: `ldconfig -p` first (what the dynamic loader itself knows), then the known places of each
distribution: Debian/Ubuntu multiarch, Fedora/RHEL `/usr/lib64`, Arch `/usr/lib`, NixOS
`/run/opengl-driver/lib`, WSL `/usr/lib/wsl/lib`, the CUDA toolkit, and finally `LD_LIBRARY_PATH`.
A library not found names every place searched, so the rejection can say so.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from offload.hardware.devices import Library
from offload.hardware.system import System

# What each backend needs, by soname; alternatives in order of preference (newest first).
WANTED: dict[str, tuple[str, ...]] = {
    "nvml": ("libnvidia-ml.so.1",),
    "cuda": ("libcuda.so.1",),
    "cudart": ("libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"),
    "vulkan": ("libvulkan.so.1",),
    "hip": ("libamdhip64.so.7", "libamdhip64.so.6", "libamdhip64.so.5"),
}

_TRIPLETS = {"x86_64": "x86_64-linux-gnu", "amd64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}
# How `ldconfig -p` tags a 64-bit library of each machine; 32-bit copies (plain "libc6") are skipped.
_LDCONFIG_ARCH = {"x86_64": "x86-64", "amd64": "x86-64", "aarch64": "AArch64", "arm64": "AArch64"}


def search_dirs(system: System) -> list[tuple[str, str]]:
    """(how, directory) in search order, after ldconfig. Globbed toolkit directories come newest first."""
    triplet = _TRIPLETS.get(system.machine, f"{system.machine}-linux-gnu")
    places: list[tuple[str, str]] = [
        ("debian-multiarch", f"/usr/lib/{triplet}"),
        ("debian-multiarch", f"/lib/{triplet}"),
        ("debian-multiarch", f"/usr/lib/{triplet}/nvidia/current"),
        ("/usr/lib64", "/usr/lib64"),
        ("/usr/lib64", "/lib64"),
        ("/usr/lib", "/usr/lib"),
        ("nix", "/run/opengl-driver/lib"),
        ("wsl", "/usr/lib/wsl/lib"),
    ]
    toolkits = [system.environ[key] for key in ("CUDA_HOME", "CUDA_PATH") if system.environ.get(key)]
    toolkits += ["/usr/local/cuda", *reversed(system.glob("/usr/local/cuda-*")), "/opt/cuda"]
    for root in _unique(toolkits):
        places.append(("cuda-toolkit", f"{root}/lib64"))
        places.append(("cuda-toolkit", f"{root}/lib"))
        places.extend(("cuda-toolkit", target) for target in system.glob(f"{root}/targets/*/lib"))
    for entry in system.environ.get("LD_LIBRARY_PATH", "").split(":"):
        if entry:
            places.append(("LD_LIBRARY_PATH", entry))
    return places


def parse_ldconfig(text: str, machine: str) -> dict[str, str]:
    """soname -> path from `ldconfig -p` output, keeping the first 64-bit entry of this machine's kind."""
    arch = _LDCONFIG_ARCH.get(machine)
    found: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, path = line.strip().partition(" => ")
        if not sep or " (" not in name:
            continue
        soname, _, tags = name.partition(" (")
        if arch is not None and arch not in tags:
            continue
        found.setdefault(soname.strip(), path.strip())
    return found


class Finder:
    """Looks libraries up; runs `ldconfig -p` once however many libraries are asked for."""

    def __init__(self, system: System) -> None:
        self._system = system
        output = system.ldconfig()
        self._ldconfig = parse_ldconfig(output, system.machine) if output is not None else None
        self._dirs = search_dirs(system)

    def searched(self) -> str:
        """Every place looked in, for a 'not found' reason."""
        places = ["ldconfig -p" if self._ldconfig is not None else "ldconfig -p (could not run)"]
        places += [directory for _how, directory in self._dirs]
        return ", ".join(_unique(places))

    def find(self, sonames: Sequence[str]) -> Library:
        if self._ldconfig is not None:
            for soname in sonames:
                if soname in self._ldconfig:
                    return Library(soname, self._ldconfig[soname], "ldconfig")
        for how, directory in self._dirs:
            for soname in sonames:
                path = f"{directory.rstrip('/')}/{soname}"
                if self._system.exists(path):
                    return Library(soname, path, how)
        return Library(sonames[0], None, "not found")

    def find_all(self) -> dict[str, Library]:
        return {key: self.find(sonames) for key, sonames in WANTED.items()}


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
