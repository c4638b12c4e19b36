"""Time and peak memory of relprop LRP against plain gradient x input, zennit and captum, in one process.

    .venv/bin/python benchmarks/bench_lrp.py                  # vgg16 and resnet50, batch 4, 224x224, CPU
    .venv/bin/python benchmarks/bench_lrp.py --quick          # batch 2, 112x112, for a smoke run

Runs are interleaved (each round runs every method once) and the median is reported, so that drifting load on a
shared machine touches all methods alike. relprop and its floors run in one set of rounds, the peers in another, each
set with its own gradient x input (a peer that writes the model's parameters would otherwise make every relprop call
rebuild its kept weights); a "first call" row per composite times a new LRP object per call, weights built in it. Each relprop composite also gets a measured floor: one gradient x input
call plus, run bare as plain torch ops on the layers' own inputs and weights, the convolutions and linear maps its
rules need beyond the gradient's one forward and one backward per layer (``extra_ops`` says how many, per rule). Its
rows show relprop / gradient, floor / gradient and relprop / floor. Peak memory is measured apart, one child process per method (so that
allocator settings that make it measurable do not slow the timed runs): the resident-set high-water mark during
one call above the level before it (Linux: /proc/self/clear_refs resets the mark; big blocks come from mmap and
go back at once).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import sys
import time
import warnings

import subprocess  # noqa: E402

import torch  # noqa: E402
import torchvision  # noqa: E402

import relprop  # noqa: E402

_libc = ctypes.CDLL("libc.so.6")


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


CLOCK = time.perf_counter  # --clock cpu: the thread's CPU time, which a loaded machine does not stretch (1 thread)


def measure(fn):
    """(seconds, peak extra MiB) of one call."""
    gc.collect()
    _libc.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    before = _rss_kib("VmRSS:")
    start = CLOCK()
    fn()
    seconds = CLOCK() - start
    return seconds, (_rss_kib("VmHWM:") - before) / 1024


def gradient_x_input(model, x, target):
    def run():
        leaf = x.detach().requires_grad_(True)
        out = model(leaf)
        (grad,) = torch.autograd.grad(out[torch.arange(len(x)), target].sum(), leaf)
        return leaf * grad
    return run


# ---- the floor: the convolutions a composite's rules need, timed bare ---------------------------------------------
def extra_ops(rule, nonnegative: bool, rectified: bool) -> tuple[int, int]:
    """(forward, backward) linear ops a rule needs on one layer beyond the gradient's one of each.

    On an input >= 0, z+ and gamma need the layer with modified weights once more (x W+, or x (W + gamma W+)); when
    the layer's output does not go only into a ReLU, gamma explains negative outputs too, which takes x W+ (x W- is
    z - b - x W+) and a second transpose. alpha-beta needs x W+ and the transposes by W+ and W-. On a signed input
    (the image) x+ and x- are apart: twice as many. The flat rule needs its denominator (ones through ones), z^B its
    two bound terms and their transposes; the epsilon rule on z itself needs nothing more.
    """
    name = type(rule).__name__ if rule is not None else "Gradient"
    if name in ("Epsilon", "Zero", "Norm", "Gradient"):
        return 0, 0
    if name in ("Flat", "WSquare"):
        return 1, 0
    if name == "ZBox":
        return 2, 2
    if name == "ZPlus":
        return (1, 0) if nonnegative else (2, 1)
    if name == "Gamma":
        if nonnegative:
            return (1, 0) if rectified else (1, 1)
        return (2, 1) if rectified else (2, 3)
    if name == "AlphaBeta":
        return (1, 1) if nonnegative else (2, 3)
    raise ValueError(f"no floor known for {rule!r}")


def _rectified_modules(model) -> set:
    """Names of the linear-like modules whose output (through a batch norm) goes only into ReLUs."""
    import torch.fx

    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())

    def is_module(node, kind):
        return node.op == "call_module" and isinstance(modules[node.target], kind)

    def is_relu(node):
        return is_module(node, torch.nn.ReLU) or (node.op == "call_function" and node.target in (
            torch.relu, torch.nn.functional.relu))

    rectified = set()
    for node in graph.nodes:
        if not is_module(node, (torch.nn.Conv2d, torch.nn.Linear)):
            continue
        users = list(node.users)
        if len(users) == 1 and is_module(users[0], torch.nn.BatchNorm2d):
            users = list(users[0].users)
        if users and all(is_relu(user) for user in users):
            rectified.add(node.target)
    return rectified


def floor_method(model, x, target, composite_name):
    """One gradient x input call, then each layer's extra forward and backward ops (extra_ops) run bare."""
    composite = relprop.composites.get(composite_name)
    rectified = _rectified_modules(model)
    calls = []

    def record(module, args, output):
        name = names[module]
        site = relprop.composites.Site("linear" if isinstance(module, torch.nn.Linear) else "conv", "", module,
                                       name, len(calls))
        nonnegative = bool(args[0].min() >= 0)
        forward, backward = extra_ops(composite.rule_for(site), nonnegative, name in rectified)
        calls.append((module, args[0].detach().clone(), torch.randn_like(output), forward, backward))

    names = {module: name for name, module in model.named_modules()}
    handles = [module.register_forward_hook(record) for module in model.modules()
               if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    gradient = gradient_x_input(model, x, target)

    def run():
        gradient()
        with torch.no_grad():
            for module, layer_input, g, forward, backward in calls:
                for _ in range(forward):
                    module(layer_input)
                for _ in range(backward):
                    if isinstance(module, torch.nn.Linear):
                        g @ module.weight
                    else:
                        torch.ops.aten.convolution_backward(
                            g, layer_input, module.weight, None, module.stride, module.padding, module.dilation,
                            False, (0,) * len(module.stride), module.groups, [True, False, False])
    return run


def relprop_method(model, x, target, composite):
    lrp = relprop.LRP(model, composite)
    return lambda: lrp(x, target).relevance


def first_call_method(model, x, target, composite):
    """A new LRP object each call: what explaining a model once costs (its modified weights are built in the call)."""
    return lambda: relprop.LRP(model, composite)(x, target).relevance


def zennit_method(model, x, target, composite_name):
    from zennit import composites as zc
    from zennit.attribution import Gradient
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    canonizer = ResNetCanonizer() if isinstance(model, torchvision.models.ResNet) else VGGCanonizer()
    composite = {"epsilon_plus_flat": lambda: zc.EpsilonPlusFlat(canonizers=[canonizer]),
                 "epsilon_gamma_box": lambda: zc.EpsilonGammaBox(low=-3.0, high=3.0, canonizers=[canonizer])}[
        composite_name]()
    grad_output = torch.nn.functional.one_hot(target, 1000).float()

    def run():
        with Gradient(model=model, composite=composite) as attributor:
            return attributor(x, grad_output)[1]
    return run


def captum_method(model, x, target):
    from captum.attr import LRP as CaptumLRP

    attributor = CaptumLRP(model)

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return attributor.attribute(x, target=target)
    return run


COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1")


def build_methods(name, batch, size, peers, floors=True, first_calls=True):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        target = model(x).argmax(1)
    methods = {"gradient x input": gradient_x_input(model, x, target)}
    for composite in COMPOSITES:
        methods[f"relprop {composite}"] = relprop_method(model, x, target, composite)
        if floors:
            methods[f"floor {composite}"] = floor_method(model, x, target, composite)
    if first_calls:
        for composite in COMPOSITES:
            methods[f"relprop {composite}, first call"] = first_call_method(model, x, target, composite)
    if peers:
        try:
            import zennit  # noqa: F401
            methods["zennit EpsilonPlusFlat"] = zennit_method(model, x, target, "epsilon_plus_flat")
            methods["zennit EpsilonGammaBox"] = zennit_method(model, x, target, "epsilon_gamma_box")
        except ImportError:
            pass
        try:
            import captum  # noqa: F401
            methods["captum LRP"] = captum_method(model, x, target)
        except ImportError:
            pass
    return methods


def child_memory(name, batch, size, method):
    """Run in a child process: peak extra MiB of one call of method (after one warm-up call)."""
    fn = build_methods(name, batch, size, peers=not method.startswith(("relprop", "gradient")),
                       floors=method.startswith("floor"), first_calls=method.endswith(", first call"))[method]
    fn()
    print(f"{measure(fn)[1]:.1f}")


def memory_in_child(name, batch, size, method):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    result = subprocess.run([sys.executable, __file__, "--memory-child", name, str(batch), str(size), method],
                            capture_output=True, text=True, env=env)
    try:
        return float(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return float("nan")


def _timed_rounds(methods, rounds, failed):
    """Median seconds per method over interleaved rounds (round 0 warms up); a method that raises is left out."""
    times = {key: [] for key in methods}
    for round_index in range(rounds + 1):
        for key, fn in methods.items():
            if key in failed:
                continue
            try:
                seconds, _ = measure(fn)
            except Exception as error:  # a peer that cannot explain this model is reported, not fatal
                failed[key] = f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"
                continue
            if round_index:
                times[key].append(seconds)
    return {key: statistics.median(values) for key, values in times.items() if values}


def bench_model(name, batch, size, rounds, peers, floors=True):
    """Two sets of interleaved rounds in one process, each with its own gradient x input: relprop's composites with
    their floors, then the peers. Apart, because a peer that writes the model's parameters (captum's LRP bumps
    every parameter's version counter) would make each relprop call that follows it rebuild its kept weights: a
    user calling relprop again on an unchanged model does not pay that. What a first call pays is its own row (a new
    LRP object each call)."""
    methods = build_methods(name, batch, size, peers, floors)
    ours = {key: fn for key, fn in methods.items() if not key.startswith(("zennit", "captum"))}
    theirs = {key: fn for key, fn in methods.items()
              if key == "gradient x input" or key.startswith(("zennit", "captum"))}
    failed = {}
    times = _timed_rounds(ours, rounds, failed)
    peer_times = _timed_rounds(theirs, rounds, failed) if len(theirs) > 1 else {}
    memory = {}
    for key in methods:
        if key not in failed and not key.startswith("floor"):  # the floor's memory is the gradient's
            memory[key] = memory_in_child(name, batch, size, key)
    base_memory = memory["gradient x input"]
    rows = []
    for key in methods:  # ours, then the peers
        if key in failed:
            rows.append((name, key, "fails", "", "", "", "", "", failed[key]))
            continue
        if key.startswith("floor"):
            continue
        source = peer_times if key in theirs and key != "gradient x input" else times
        t, base_time = source[key], source["gradient x input"]
        floor, versus = "", ""
        floor_key = "floor " + key[len("relprop "):]
        if floor_key in times:
            floor, versus = f"{times[floor_key] / base_time:.2f}x", f"{t / times[floor_key]:.2f}x"
        m = memory[key]
        note = "peers' rounds" if source is peer_times else ("weights built in the call" if key.endswith("first call")
                                                             else "")
        rows.append((name, key, f"{t:.3f}", f"{t / base_time:.2f}x", floor, versus,
                     f"{m:.0f}", f"{m / base_memory:.2f}x", note))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg16", "resnet50"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="batch 2, 112x112, 2 rounds")
    parser.add_argument("--no-peers", action="store_true", help="skip zennit and captum")
    parser.add_argument("--no-floors", action="store_true", help="skip the composites' measured floors")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or the CPU time of the calling thread (meaningful with one thread, e.g. "
                             "OMP_NUM_THREADS=1, on a loaded machine)")
    parser.add_argument("--memory-child", nargs=4, metavar=("MODEL", "BATCH", "SIZE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        name, batch, size, method = args.memory_child
        child_memory(name, int(batch), int(size), method)
        return
    global CLOCK
    CLOCK = time.thread_time if args.clock == "cpu" else time.perf_counter
    if args.quick:
        args.batch, args.size, args.rounds = 2, 112, 2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, batch {args.batch}, {args.size}x{args.size}, "
          f"median of {args.rounds} interleaved rounds, {args.clock} clock, CPU; relprop and its floors in one set of "
          "rounds, the peers in another, each with its own gradient\n")
    print("| model | method | time (s) | time / gradient | floor / gradient | time / floor | peak MiB | "
          "memory / gradient | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        for row in bench_model(name, args.batch, args.size, args.rounds, not args.no_peers, not args.no_floors):
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
