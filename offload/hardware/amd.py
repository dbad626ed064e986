"""AMD GPUs through sysfs: amdgpu's /sys/class/drm/card*/device and the KFD topology (what ROCm itself reads).

VRAM from mem_info_vram_total/used; the gfx target ("gfx1100") from the KFD node whose drm_render_minor matches
the card. HIP numbers GPUs in KFD order; ROCR_VISIBLE_DEVICES (indices or "GPU-" UUIDs) filters first, then
HIP_VISIBLE_DEVICES (indices) filters what is left.
"""

from __future__ import annotations

from dataclasses import dataclass

from offload.hardware.devices import Device, ProbeResult, Rejection
from offload.hardware.system import System

PROBE = "amd"
DRM = "/sys/class/drm"
KFD_NODES = "/sys/class/kfd/kfd/topology/nodes"
AMD_VENDOR = 0x1002


@dataclass(frozen=True, slots=True)
class _Node:
    gfx: str
    render_minor: int | None
    unique_id: str | None


def gfx_target(version: int) -> str:
    """KFD's gfx_target_version to the LLVM target name: 110000 -> gfx1100, 90010 -> gfx90a, 100300 -> gfx1030."""
    major, minor, stepping = version // 10000, version // 100 % 100, version % 100
    return f"gfx{major}{minor:x}{stepping:x}"


def _properties(text: str) -> dict[str, str]:
    pairs = (line.split(None, 1) for line in text.splitlines() if line.strip())
    return {pair[0]: pair[1].strip() for pair in pairs if len(pair) == 2}


def _int(text: str | None, base: int = 10) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip(), base)
    except ValueError:
        return None


def _kfd_gpus(system: System) -> list[_Node]:
    nodes = []
    for entry in sorted(system.listdir(KFD_NODES), key=lambda name: _int(name) or 0):
        properties = _properties(system.read_text(f"{KFD_NODES}/{entry}/properties") or "")
        version = _int(properties.get("gfx_target_version"))
        if not version:  # CPU nodes have 0
            continue
        unique = properties.get("unique_id")
        nodes.append(_Node(gfx_target(version), _int(properties.get("drm_render_minor")), unique))
    return nodes


def probe(system: System) -> ProbeResult:
    """Every AMD GPU the ROCm (HIP) backend could use; never raises."""
    nodes = _kfd_gpus(system)
    cards = [name for name in system.listdir(DRM) if name.startswith("card") and name[4:].isdigit()]
    rejections: list[Rejection] = []
    found: list[tuple[str, int, int | None, _Node | None]] = []  # name, total, free, KFD node
    for card in cards:
        device = f"{DRM}/{card}/device"
        if _int(system.read_text(f"{device}/vendor"), 16) != AMD_VENDOR:
            continue
        name = (system.read_text(f"{device}/product_name") or "").strip()
        if not name:
            name = f"AMD GPU {(system.read_text(f'{device}/device') or '?').strip()}"
        minors = [_int(entry[7:]) for entry in system.listdir(f"{device}/drm") if entry.startswith("renderD")]
        node = next((n for n in nodes if n.render_minor is not None and n.render_minor in minors), None)
        total = _int(system.read_text(f"{device}/mem_info_vram_total"))
        used = _int(system.read_text(f"{device}/mem_info_vram_used"))
        if node is None:
            reason = "no KFD topology node: the amdgpu driver offers no compute (ROCm) on it"
            rejections.append(Rejection(PROBE, f"{card} {name}", reason))
        elif not total:
            rejections.append(Rejection(PROBE, f"{card} {name}", "mem_info_vram_total is missing or 0"))
        else:
            found.append((name, total, total - used if used is not None else None, node))

    # HIP numbers GPUs in KFD node order.
    found.sort(key=lambda item: nodes.index(item[3]) if item[3] in nodes else len(nodes))
    order = _visible(system.environ.get("ROCR_VISIBLE_DEVICES"), [item[3] for item in found])
    order = [order[i] for i in _visible_indices(system.environ.get("HIP_VISIBLE_DEVICES"), len(order))]
    devices: list[Device] = []
    for position, (name, total, free, node) in enumerate(found):
        if position not in order:
            rejections.append(Rejection(PROBE, name, "hidden by ROCR_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES"))
            continue
        index = order.index(position)
        uuid = f"GPU-{int(node.unique_id):016x}" if node and node.unique_id and node.unique_id.isdigit() else None
        devices.append(
            Device(
                id=f"rocm:{index}",
                library="rocm",
                name=name,
                total_memory=total,
                free_memory=free,
                uuid=uuid,
                compute=node.gfx if node else None,
                index=index,
            )
        )
    devices.sort(key=lambda d: d.index)
    return ProbeResult(tuple(devices), tuple(rejections))


def _visible(value: str | None, nodes: list[_Node | None]) -> list[int]:
    """Positions ROCR_VISIBLE_DEVICES keeps, in its order: indices, or "GPU-<hex unique id>"."""
    if value is None:
        return list(range(len(nodes)))
    order: list[int] = []
    for token in (t.strip() for t in value.split(",")):
        if token.isdigit() and int(token) < len(nodes):
            position: int | None = int(token)
        elif token.upper().startswith("GPU-"):
            ids = [_int(n.unique_id) if n else None for n in nodes]
            wanted = _int(token[4:], 16)
            position = ids.index(wanted) if wanted is not None and wanted in ids else None
        else:
            position = None
        if position is None or position in order:
            break
        order.append(position)
    return order


def _visible_indices(value: str | None, count: int) -> list[int]:
    if value is None:
        return list(range(count))
    order: list[int] = []
    for token in (t.strip() for t in value.split(",")):
        if not token.isdigit() or int(token) >= count or int(token) in order:
            break
        order.append(int(token))
    return order
