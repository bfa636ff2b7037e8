"""megakd.platform.comm: the one place collectives are issued, on the device of their group.

On a GPU, megatron's groups are NCCL and take CUDA tensors only; the first GPU run crashed on a CPU
tensor all-reduced in the trainer. The source scan below keeps every collective going through comm;
the GPU tier (tests/test_gpu.py) runs the same helpers over NCCL."""

import ast
import os

import pytest
import torch
import torch.distributed as dist

from megakd import platform
from megakd.platform import comm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANNED = ("megakd", "tools", "examples", "benchmarks", "scripts")
COMM = os.path.join("megakd", "platform", "comm.py")
COLLECTIVES = {"all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter",
               "reduce_scatter_tensor", "reduce", "gather", "scatter", "all_to_all",
               "all_to_all_single", "barrier", "monitored_barrier", "send", "recv", "isend", "irecv",
               "batch_isend_irecv", "broadcast_object_list", "all_gather_object", "gather_object",
               "scatter_object_list", "send_object_list", "recv_object_list"}
P2P = {"send", "recv", "isend", "irecv"}  # also methods of bare process groups (the bridge)


def direct_collectives(source: str):
    """(line, call) of each collective issued without comm: torch.distributed.X(...) under any alias,
    names imported from torch.distributed, and send/recv on any object but comm."""
    tree = ast.parse(source)
    aliases, imported = {"torch.distributed"}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.name == "torch.distributed" and a.asname}
        elif isinstance(node, ast.ImportFrom) and node.module == "torch":
            aliases |= {a.asname or a.name for a in node.names if a.name == "distributed"}
        elif isinstance(node, ast.ImportFrom) and node.module == "torch.distributed":
            imported |= {a.asname or a.name for a in node.names if a.name in COLLECTIVES}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id in imported:
            found.append((node.lineno, f.id))
        elif isinstance(f, ast.Attribute) and f.attr in COLLECTIVES:
            base = ast.unparse(f.value)
            if base in aliases or (f.attr in P2P and base != "comm"):
                found.append((node.lineno, f"{base}.{f.attr}"))
    return found


def test_no_collective_outside_comm():
    bad = []
    for top in SCANNED:
        for root, _, files in os.walk(os.path.join(REPO, top)):
            for name in files:
                path = os.path.join(root, name)
                if name.endswith(".py") and os.path.relpath(path, REPO) != COMM:
                    bad += [f"{os.path.relpath(path, REPO)}:{line}: {call}"
                            for line, call in direct_collectives(open(path).read())]
    assert not bad, "collectives must go through megakd.platform.comm:\n" + "\n".join(bad)


@pytest.mark.parametrize("snippet", [
    "import torch.distributed as dist\ndist.all_reduce(x)",
    "import torch\ntorch.distributed.broadcast(x, 0)",
    "from torch import distributed as d\nd.barrier()",
    "from torch.distributed import all_gather_object as ago\nago(p, o)",
    "bridge.send([t], 1, 0)",
    "self.split.bridge.recv([t], 1, 0)",
])
def test_scan_finds_direct_collectives(snippet):
    assert direct_collectives(snippet)


@pytest.mark.parametrize("snippet", [
    "from megakd.platform import comm\ncomm.all_reduce(x, comm.MAX)",
    "import torch.distributed as dist\ndist.get_rank(); dist.new_group([0])",
    "comm.isend(t, 1, 0, bridge)",
])
def test_scan_allows_comm_and_non_collectives(snippet):
    assert not direct_collectives(snippet)


@pytest.fixture
def world_of_one():
    platform.init_distributed()
    yield
    platform.destroy()


def test_helpers_on_gloo_keep_the_callers_tensor(world_of_one):
    assert comm.group_device() == torch.device("cpu")
    x = torch.tensor([1.5, -2.0], dtype=torch.float64)
    assert comm.all_reduce(x, comm.MAX) is x and x.tolist() == [1.5, -2.0]
    assert comm.broadcast(x, 0) is x
    parts = comm.all_gather(torch.arange(3))
    assert len(parts) == 1 and parts[0].tolist() == [0, 1, 2]
    assert comm.broadcast_object({"a": 1}) == {"a": 1}
    assert comm.all_gather_object("x") == ["x"]
    comm.barrier()


def test_bare_gloo_group_is_cpu_and_p2p_checks_the_device(world_of_one):
    store = dist.HashStore()
    bridge = dist.ProcessGroupGloo(store, 0, 1, __import__("datetime").timedelta(seconds=30))
    assert comm.group_device(bridge) == torch.device("cpu")
    with pytest.raises(ValueError, match="group_device"):
        comm.isend(torch.zeros(2, device="meta"), 0, 1, bridge)
