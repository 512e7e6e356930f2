"""A study's energy on every node of a Ray cluster: one small measuring actor per node.

A study on a cluster started with ``ray start`` spends energy on every node: the trials, and
Ray's own processes (raylet, workers, the head's GCS and dashboard). The driver's meter sees only
its own node's processes, so each alive node gets a zero-CPU actor pinned to it that measures
*Ray's processes of that node*: its raylet and every process under it, plus on the head node the
cluster's processes of this session (GCS, dashboard, monitors). On a node with RAPL or NVML
counters the node's figure is their share of the counters (``attributed:cpu-time-share``,
GPU per-process utilisation); elsewhere the CPU-time estimate of those processes.

Each node's figure goes into ``study.json`` under ``nodes`` (with its domains, which the study's
exported record carries: :func:`lightning_green.tune.study_energy.part_record`); the study's energy
is their sum plus the driver's own process tree.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Any

#: A node resource only the head node has (Ray >= 2.10).
HEAD_RESOURCE = "node:__internal_head__"
#: A Ray session folder, as a process's arguments name it.
_SESSION = re.compile(r"(/[^\s=]*/session_[^/\s]+)/sockets/")


class _NodeMeter:
    """Measures Ray's processes on the node it runs on (an actor; see :func:`start_node_meters`)."""

    def __init__(self, energy: dict[str, Any], head: bool) -> None:
        # An actor without GPUs gets CUDA_VISIBLE_DEVICES="": the node's meter reads every GPU.
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        from lightning_green.energy import make_meter
        from lightning_green.energy.estimate import ProcessTree

        raylet = os.getppid()
        extra = ray_session_processes(raylet) if head else []
        what = "Ray's processes on this node (the raylet and every process under it" + (
            ", and the cluster's GCS, dashboard and monitors)" if head else ")"
        )
        self.tree = ProcessTree(root=raylet, extra=extra, what=what)
        self.meter = make_meter(
            energy.get("backend", "auto"),
            gpu_indices=None,
            measure_node=True,
            rapl_root=energy.get("rapl_root") or "/sys/class/powercap",
            watts_per_core=energy.get("watts_per_core") or 12.0,
            track_descendants=self.tree,
            attribution=energy.get("attribution", "auto"),
        )
        self.head = head

    def begin(self) -> None:
        self.meter.begin_window("study")

    def end(self) -> dict[str, Any]:
        import ray

        try:
            r = self.meter.end_window("study", settle=True)
        finally:
            self.meter.close()
            self.tree.close()
        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "host": socket.gethostname(),
            "head": self.head,
            "energy_j": r.joules,
            "node_j": r.node_joules,
            "seconds": r.seconds,
            "complete": r.complete,
            "sources": r.sources,
            "attribution": r.attributions,
            "covers": self.tree.what,
            # per domain and device, as a window record holds them: what the study exports
            "domains": [d.to_dict() for d in r.domains],
        }


def ray_session_processes(raylet: int) -> list[int]:
    """The head's cluster processes of this Ray session: every process whose command line names
    the raylet's session folder, but not a raylet (other nodes' on this machine) or its tree."""
    import psutil

    # The raylet's socket arguments name the session folder (.../session_<id>/sockets/raylet); one
    # argument holds the whole worker command line, so the folder is matched, not split out.
    try:
        found = (_SESSION.search(a) for a in psutil.Process(raylet).cmdline())
        session = next((m.group(1) for m in found if m), None)
    except psutil.Error:
        return []
    if not session:
        return []
    out = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            if p.info["name"] == "raylet" or p.pid == raylet or not p.info["cmdline"]:
                continue
            if any(session in arg for arg in p.info["cmdline"]) and not _under(p, "raylet"):
                out.append(p.pid)
        except psutil.Error:
            continue
    return out


def _under(proc: Any, name: str) -> bool:
    import psutil

    try:
        return any(a.name() == name for a in proc.parents())
    except psutil.Error:
        return False


class NodeMeters:
    """One measuring actor on each alive node of the connected Ray cluster."""

    def __init__(self, energy: dict[str, Any]) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor = ray.remote(num_cpus=0, max_restarts=0)(_NodeMeter)
        self.actors = [
            actor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                energy, HEAD_RESOURCE in n.get("Resources", {})
            )
            for n in ray.nodes()
            if n.get("Alive")
        ]
        ray.get([a.begin.remote() for a in self.actors])

    def end(self) -> list[dict[str, Any]]:
        """Each node's figure (a node whose actor died is listed with no figure, never as zero)."""
        import ray

        out = []
        for a in self.actors:
            try:
                out.append(ray.get(a.end.remote(), timeout=60))
            except Exception as err:  # a node lost mid-study: its energy is unknown, said so
                out.append(
                    {"energy_j": None, "complete": False, "error": f"{type(err).__name__}: {err}"[:300]}
                )
            finally:
                ray.kill(a)
        return out
