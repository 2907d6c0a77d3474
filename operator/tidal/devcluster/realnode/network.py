"""The pod network of real nodes: one Linux bridge with a private /16 that nothing on the host uses.

Why this exists: the bridge is shared by every real node of a cluster (their pods reach each other and the
host reaches every pod, for probes), outlives any one node and is deleted from its recorded name by
:func:`~tidal.devcluster.realnode.cleanup_node_dirs`; picking its /16 needs a host-wide lock and a look at
the host's addresses, routes and DNS servers.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tidal.devcluster.realnode.prereqs import NodeStartError, run


def _lock_path() -> Path:
    base = Path("/run/lock") if Path("/run/lock").is_dir() else Path(tempfile.gettempdir())
    return base / "tidal-podnet.lock"


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host routes or has an address in, plus its DNS servers (not the default)."""
    used: list[ipaddress.IPv4Network] = []
    for argv in (["ip", "-4", "-o", "addr", "show"], ["ip", "-4", "route", "show", "table", "all"]):
        for line in run(argv, check=False).stdout.splitlines():
            for word in line.split():
                with contextlib.suppress(ValueError):
                    if "/" in word or word[:1].isdigit():
                        net = ipaddress.ip_network(word, strict=False)
                        if isinstance(net, ipaddress.IPv4Network) and net.prefixlen > 0:
                            used.append(net)
    with contextlib.suppress(OSError):
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    net = ipaddress.ip_network(parts[1])
                    if isinstance(net, ipaddress.IPv4Network):
                        used.append(net)
    return used


# The dev cluster's Service range (10.96.0.0/16) and KWOK's pod range (10.244.0.0/16) lie outside these.
_CANDIDATE_OCTETS = range(200, 240)


@dataclass(frozen=True)
class PodNetwork:
    """A bridge for real nodes' pods: `cidr` (a /16), the bridge holding its first address."""

    bridge: str
    cidr: ipaddress.IPv4Network

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The bridge's own address: the node IP of every real node on it, and the host's side for probes."""
        return self.cidr.network_address + 1

    def node_range(self, index: int) -> ipaddress.IPv4Network:
        """The /24 from which the pods of node number `index` get their addresses."""
        if not 0 <= index < 254:
            raise ValueError(f"node index {index} out of range 0..253")
        return ipaddress.IPv4Network((int(self.cidr.network_address) + (index + 1) * 256, 24))

    @classmethod
    def create(cls) -> PodNetwork:
        """Pick a /16 in 10.200-239.0.0 that nothing on the host uses, create and bring up its bridge."""
        with _lock_path().open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = _networks_in_use()
            links = set(run(["ip", "-o", "link", "show"], check=False).stdout.split())
            for octet in _CANDIDATE_OCTETS:
                cidr = ipaddress.IPv4Network(f"10.{octet}.0.0/16")
                bridge = f"tidal{octet}"
                if f"{bridge}:" in links or any(cidr.overlaps(net) for net in used):
                    continue
                network = cls(bridge=bridge, cidr=cidr)
                run(["ip", "link", "add", bridge, "type", "bridge"])
                try:
                    run(["ip", "addr", "add", f"{network.gateway}/{cidr.prefixlen}", "dev", bridge])
                    run(["ip", "link", "set", bridge, "up"])
                except BaseException:
                    network.delete()
                    raise
                return network
        raise NodeStartError("no free 10.x.0.0/16 for the pod network (all of 10.200-239 are in use)")

    def exists(self) -> bool:
        """Whether the bridge is there."""
        return run(["ip", "link", "show", self.bridge], check=False).returncode == 0

    def delete(self) -> None:
        """Delete the bridge (veths of namespaces already gone went with them)."""
        if self.exists():
            run(["ip", "link", "delete", self.bridge], check=False)

    def to_json(self) -> dict[str, str]:
        """For the node's state file."""
        return {"bridge": self.bridge, "cidr": str(self.cidr)}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> PodNetwork:
        """Inverse of :meth:`to_json`."""
        return cls(bridge=data["bridge"], cidr=ipaddress.IPv4Network(data["cidr"]))
