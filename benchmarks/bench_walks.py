"""GNN-LRP relevant walks: relprop's batched passes against one masked LRP backward per walk (the DIG way).

    python benchmarks/bench_walks.py                  # 300 nodes, ~4 in-edges each, 3 GCN layers, CPU
    python benchmarks/bench_walks.py --nodes 100      # smaller, for a smoke run
    python benchmarks/bench_walks.py --nodes 20 --readout mean   # graph classification: all walks, graph output

The walks are all walks of the 3-layer network ending at the node with most in-edges (with --readout, a global
pooling readout and a linear head follow the layers, and the walks are all walks of the graph, for its output).
Each method runs in its own process (one thread), so its peak resident memory is its own: the figure is the peak
minus the process's memory after building the model and graph. The per-walk reference masks the relevance leaving
layer l to the walk's v_l and reads v_0's input relevance, one LRP run per walk; both methods' walk relevances are
compared.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def setup(nodes: int, degree: int, layers: int, width: int, readout: str | None = None):
    from torch_geometric import nn

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = torch.nn.ModuleList(nn.GCNConv(width, width) for _ in range(layers))
            self.head = torch.nn.Linear(width, 2) if readout else None  # node mode: the seeded graph unchanged

        def forward(self, x, edge_index, batch=None):
            for conv in self.convs[:-1]:
                x = conv(x, edge_index).relu()
            x = self.convs[-1](x, edge_index)
            if readout is None:
                return x
            return self.head(getattr(nn, f"global_{readout}_pool")(x.relu(), batch))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if name.endswith("bias"):
                parameter.uniform_(-0.1, 0.1)
    edge_index = torch.randint(0, nodes, (2, nodes * degree))
    node = int(torch.bincount(edge_index[1], minlength=nodes).argmax())
    return net, torch.randn(nodes, width), edge_index, node, [f"convs.{i}" for i in range(layers)]


def per_walk(net, x, edge_index, node, layers, readout):
    """One LRP run per walk, with the walk's masks (the graph as one sample with a readout, else nodes as the batch)."""
    import relprop
    from relprop.gnn import LayerMasks, predecessors, suffixes

    before = predecessors(edge_index, x.shape[0])
    ends = [node] if readout is None else range(x.shape[0])
    batch = torch.zeros(x.shape[0], dtype=torch.long)
    walks, relevance = [], []
    for suffix in [suffix for end in ends for suffix in suffixes(before, end, len(layers))]:
        for first in before[suffix[0]]:
            masks = [torch.zeros(x.shape[0]).index_fill_(0, torch.tensor([keep]), 1) for keep in suffix]
            with LayerMasks(net, layers, masks):
                if readout is None:
                    per_node = relprop.explain(net, x, 0, composite="epsilon",
                                               forward=lambda m, z: m(z, edge_index)).relevance
                else:
                    per_node = relprop.explain(net, x[None], 0, composite="epsilon",
                                               forward=lambda m, z: m(z[0], edge_index, batch)).relevance[0]
            walks.append((first,) + suffix)
            relevance.append(float(per_node[first].sum()))
    return walks, relevance


def batched(net, x, edge_index, node, layers, batch_size, readout):
    from relprop.gnn import relevant_walks

    if readout is None:
        found = relevant_walks(net, x, edge_index, layers, node, 0, composite="epsilon", batch_size=batch_size)
    else:
        found = relevant_walks(net, x, edge_index, layers, target=0, level="graph", composite="epsilon",
                               batch_size=batch_size)
    return [tuple(w) for w in found.walks.tolist()], found.relevance.tolist()


def child(args):
    """Run one method; print its walks, time and peak memory as JSON."""
    torch.set_num_threads(1)
    net, x, edge_index, node, layers = setup(args.nodes, args.degree, args.layers, args.width, args.readout)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if args.child == "per-walk":
        walks, relevance = per_walk(net, x, edge_index, node, layers, args.readout)
    else:
        walks, relevance = batched(net, x, edge_index, node, layers, args.batch_size, args.readout)
    seconds = time.perf_counter() - start
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024  # KiB -> MiB on Linux
    print(json.dumps({"seconds": seconds, "peak_mib": peak, "walks": walks, "relevance": relevance}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=300)
    parser.add_argument("--degree", type=int, default=4, help="edges per node")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--readout", choices=["add", "mean", "max"], default=None,
                        help="graph classification: this global pooling and a linear head after the layers")
    parser.add_argument("--child", choices=["per-walk", "batched"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    results = {}
    for method in ("batched", "per-walk"):
        command = [sys.executable, __file__, "--child", method] + sys.argv[1:]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[method] = json.loads(out.strip().splitlines()[-1])
    batched_walks = dict(zip(map(tuple, results["batched"]["walks"]), results["batched"]["relevance"]))
    reference = dict(zip(map(tuple, results["per-walk"]["walks"]), results["per-walk"]["relevance"]))
    worst = max(abs(batched_walks[w] - r) for w, r in reference.items())
    total = sum(reference.values())
    readout = f", global_{args.readout}_pool readout" if args.readout else ""
    print(f"{args.nodes} nodes, {args.nodes * args.degree} edges, {args.layers} GCN layers of width {args.width}"
          f"{readout}: "
          f"{len(reference)} walks (relevance {total:.3f} in all), "
          f"batch size {args.batch_size}; largest difference {worst:.2e}")
    print(f"{'method':10} {'seconds':>8} {'peak MiB':>9}")
    for method, result in results.items():
        print(f"{method:10} {result['seconds']:8.2f} {result['peak_mib']:9.1f}")


if __name__ == "__main__":
    main()
