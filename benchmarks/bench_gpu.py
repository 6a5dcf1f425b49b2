"""The GPU rows of docs/speed.md, measured side by side in one run on an NVIDIA machine.

    python benchmarks/bench_gpu.py --out DIR [--budget-s 480] [--images 2048] [--only b32,e2e,decode,l14]

Sections, in order (each one is skipped, and says so, once ``--budget-s`` is spent; every figure
is written to ``DIR/gpu.json`` as soon as it exists):

1. ``env``: GPU, driver, onnxruntime and torch versions, whether onnxruntime's CUDA provider loads.
2. ViT-B/32 shape, random weights: ``clipeval.export`` fp16 bundle (fused, validated); then the
   vision tower at a large batch, round robin over: onnxruntime CUDA with the bundle's fp16 graph
   (input and output on the GPU; with and without CUDA graphs; with float16 I/O), the engine's own
   call from a host array (``Tower.run``: IO binding, pageable copy) and from a pinned staging
   buffer, against PyTorch eager ``.half()`` (SDPA attention), autocast fp16 and fp32. Text tower
   at 77 tokens and at the engine's own lengths, likewise.
3. End to end on ``--images`` photo-like JPEGs (640x480 and 1024x768, five captions each):
   ``clipeval bench --decode threads --vs-reference`` (the reference pipeline: PyTorch autocast
   fp16, the transformers processor, one DataLoader worker), then the engine with process decoding,
   exact and with ``--fast-decode``.
4. Decode alone across all cores (``benchmarks/bench_decode.py --rates-only``): the machine's
   all-core decode rate that end to end is compared with.
5. ViT-L/14@336 shape (vision tower only; the text tower is shrunk): export and towers as in 2.

``--smoke`` runs the same code on CPU with tiny shapes (a check of the script, no figures).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

REPORT: dict = {"sections": {}}
OUT: Path
T_START = time.perf_counter()
BUDGET = 480.0


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T_START:6.1f}s] {msg}", file=sys.stderr, flush=True)


def save() -> None:
    (OUT / "gpu.json").write_text(json.dumps(REPORT, indent=1, default=str))


def left() -> float:
    return BUDGET - (time.perf_counter() - T_START)


def section(name: str, need_s: float):
    """Decorator: run the section if ``need_s`` seconds of budget are left; record errors."""

    def wrap(fn):
        def run(*args, **kwargs):
            if left() < need_s:
                REPORT["sections"][name] = f"skipped: {left():.0f} s of budget left, needs ~{need_s:.0f}"
                log(REPORT["sections"][name])
                save()
                return None
            log(f"--- {name}")
            t0 = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
                REPORT["sections"][name] = f"done in {time.perf_counter() - t0:.1f} s"
                return result
            except Exception as exc:  # noqa: BLE001 - a benchmark keeps going and reports
                REPORT["sections"][name] = f"failed after {time.perf_counter() - t0:.1f} s: {type(exc).__name__}: {exc}"
                traceback.print_exc()
                return None
            finally:
                log(REPORT["sections"][name])
                save()

        return run

    return wrap


# --- 1. environment ----------------------------------------------------------------------------

@section("env", 0)
def env(smoke: bool) -> dict:
    import onnxruntime as ort
    import torch

    from clipeval.engine.sessions.onnx import cuda_problem

    info = {
        "python": platform.python_version(), "cpus": os.cpu_count(), "onnxruntime": ort.__version__,
        "ort_providers": ort.get_available_providers(), "torch": torch.__version__,
        "cuda_problem": cuda_problem(), "torch_cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        info["nvidia_smi"] = str(exc)
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    REPORT["env"] = info
    log(json.dumps(info))
    if not smoke and info["cuda_problem"]:
        raise RuntimeError(f"onnxruntime's CUDA provider cannot load: {info['cuda_problem']}")
    return info


# --- 2/5. towers -------------------------------------------------------------------------------

def export_bundle(work: Path, shape: str, smoke: bool, small_text: bool, validate: bool) -> tuple[Path, Path]:
    from bench_export import SHAPES, make_checkpoint

    from clipeval.export import export_checkpoint

    if smoke:  # a tiny stand-in with the same code path
        SHAPES["smoke"] = dict(image_size=64, patch_size=16, vision_hidden=64, vision_layers=2, vision_heads=2,
                               vision_intermediate=128, projection=32, text_hidden=64, text_layers=2, text_heads=2)
        shape = "smoke"
    tag = (f"{shape}-{len(REPORT.get('export', {}))}" if smoke else shape).replace("/", "").replace("@", "-")
    t0 = time.perf_counter()
    ckpt = make_checkpoint(work / f"ckpt-{tag}", shape, small_text=small_text)
    t1 = time.perf_counter()
    bundle = export_checkpoint(ckpt, work / f"bundle-{tag}", precision="fp16", validate=validate)
    t2 = time.perf_counter()
    manifest = json.loads((bundle / "manifest.json").read_text())
    REPORT.setdefault("export", {})[shape] = {
        "checkpoint_s": t1 - t0, "export_s": t2 - t1, "validated": validate,
        "fused_ops": manifest.get("fused_ops"), "graph_ops": manifest.get("graph_ops"),
        "validation": {v: {k: (x["max_abs_diff"], x["min_cosine"]) for k, x in b["outputs"].items()}
                       for v, b in (manifest.get("validation") or {}).items() if isinstance(b, dict) and "outputs" in b},
    }
    log(f"{shape}: checkpoint {t1 - t0:.0f} s, export {t2 - t1:.0f} s")
    return ckpt, bundle


def fp16_io_graph(bundle: Path, work: Path, tower: str = "vision") -> Path:
    """The bundle's fused graph converted to float16 with float16 inputs/outputs (no boundary Casts)."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    from clipeval.export.towers import ir_version_for_opset

    from clipeval.export import optimize

    manifest = json.loads((bundle / "manifest.json").read_text())
    # heads and width from the checkpoint the bundle was exported from (the manifest's source)
    cfg = json.loads((Path(manifest["source"]) / "config.json").read_text())[f"{tower}_config"]
    fused = work / f"{bundle.name}-{tower}.fused.onnx"
    optimize.fuse(bundle / f"{tower}.onnx", fused,
                  model_type=manifest["fused_ops"][tower].get("optimizer_model_type", "clip"),
                  num_heads=cfg["num_attention_heads"], hidden_size=cfg["hidden_size"], opset=17)
    model = OnnxModel(onnx.load(str(fused)))
    model.convert_float_to_float16(keep_io_types=False, use_symbolic_shape_infer=True)
    model.model.ir_version = ir_version_for_opset(17)
    out = work / f"{bundle.name}-{tower}.fp16io.onnx"
    onnx.save(model.model, str(out))
    return out


class OrtCase:
    """One onnxruntime configuration of a tower, fed the same batch every call."""

    def __init__(self, name: str, path: Path, feeds: dict[str, np.ndarray], *, device: str, mode: str,
                 cuda_graph: bool = False, fp16_io: bool = False):
        import onnxruntime as ort

        from clipeval.engine.sessions.onnx import open_tower, session_options

        self.name, self.mode, self.n = name, mode, next(iter(feeds.values())).shape[0]
        self.feeds = {k: (v.astype(np.float16) if fp16_io and v.dtype == np.float32 else v) for k, v in feeds.items()}
        if mode == "engine":  # exactly what the engine calls
            self.tower = open_tower(path, provider="cuda" if device == "cuda" else "cpu")
            self.session = self.tower.session
            return
        opts = {"cudnn_conv_algo_search": "HEURISTIC"}
        if cuda_graph:
            opts["enable_cuda_graph"] = "1"
        providers = [("CUDAExecutionProvider", opts)] if device == "cuda" else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), sess_options=session_options(), providers=providers)
        out = self.session.get_outputs()[0]
        self.binding = self.session.io_binding()
        dev = "cuda" if device == "cuda" else "cpu"
        if mode == "pinned":
            self.staged = {}
            for k, v in self.feeds.items():
                value = ort.OrtValue.ortvalue_from_shape_and_type(v.shape, v.dtype, "cuda_pinned", 0)
                ctype = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float16): ctypes.c_uint16,
                         np.dtype(np.int64): ctypes.c_int64}[v.dtype]
                view = np.ctypeslib.as_array(ctypes.cast(value.data_ptr(), ctypes.POINTER(ctype)), shape=v.shape)
                self.staged[k] = (value, view.view(v.dtype))
                self.binding.bind_ortvalue_input(k, value)
        else:  # inputs resident on the device
            self.values = {k: ort.OrtValue.ortvalue_from_numpy(v, dev, 0) for k, v in self.feeds.items()}
            for k, v in self.values.items():
                self.binding.bind_ortvalue_input(k, v)
        width = out.shape[1]
        if not isinstance(width, int):
            width = self.session.run(None, {k: v[:1] for k, v in self.feeds.items()})[0].shape[1]
        dtype = np.float16 if fp16_io else np.float32
        self.out = ort.OrtValue.ortvalue_from_shape_and_type((self.n, width), dtype, dev, 0)
        self.binding.bind_ortvalue_output(out.name, self.out)

    def step(self) -> None:
        if self.mode == "engine":
            self.tower.run(self.feeds)
            return
        if self.mode == "pinned":
            for k, (_, view) in self.staged.items():
                np.copyto(view, self.feeds[k])
        self.session.run_with_iobinding(self.binding)
        if self.mode == "pinned":
            self.out.numpy()  # the result back on the host, as the engine needs it

    def finish(self) -> None:
        if self.mode not in ("engine",):
            self.out.numpy()  # waits for the device


class TorchCase:
    def __init__(self, name: str, model, feeds: dict, *, kind: str, device: str, tower: str):
        import torch

        self.name, self.kind, self.device, self.tower = name, kind, device, tower
        self.model = model
        self.n = next(iter(feeds.values())).shape[0]
        dtype = torch.float16 if kind == "half" else torch.float32
        self.feeds = {k: torch.from_numpy(v).to(device) for k, v in feeds.items()}
        if "pixel_values" in self.feeds:
            self.feeds["pixel_values"] = self.feeds["pixel_values"].to(dtype)
        self.autocast = torch.autocast(device, dtype=torch.float16, enabled=kind == "autocast" and device == "cuda")

    def step(self) -> None:
        import torch
        import torch.nn.functional as F

        with torch.no_grad(), self.autocast:
            fn = self.model.get_image_features if self.tower == "vision" else self.model.get_text_features
            out = fn(**self.feeds)
            out = out if isinstance(out, torch.Tensor) else out.pooler_output
            self.last = F.normalize(out, dim=-1)

    def finish(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()


def rate_of(case, seconds: float) -> float:
    """Items per second of ``case.step`` over about ``seconds`` (after a warm-up)."""
    for _ in range(3):
        case.step()
    case.finish()
    calls = 0
    t0 = time.perf_counter()
    while True:
        case.step()
        calls += 1
        if calls >= 3 and time.perf_counter() - t0 >= seconds:
            break
    case.finish()
    return calls * case.n / (time.perf_counter() - t0)


def round_robin(cases, rounds: int, seconds: float, best: dict, on_round=None) -> dict:
    """Best items/s of each case over ``rounds`` passes taken in turn, so every case sees the same
    clocks and temperature; a case that raises (CUDA graphs refused, say) is recorded as failed
    and left out of later passes. ``on_round`` runs after each pass (to save what exists)."""
    for r in range(rounds):
        for c in cases:
            if isinstance(best.get(c.name), str):
                continue
            try:
                best[c.name] = max(best.get(c.name, 0.0), rate_of(c, seconds))
            except Exception as exc:  # noqa: BLE001 - record and go on
                best[c.name] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
            log(f"round {r}: {c.name}: {best[c.name]}")
        if on_round:
            on_round()
    return best


def torch_models(ckpt: Path, device: str):
    import transformers

    models = {}
    for kind in ("half", "fp32"):
        m = transformers.CLIPModel.from_pretrained(str(ckpt), attn_implementation="sdpa").eval().to(device)
        models[kind] = m.half() if kind == "half" else m
    models["autocast"] = models["fp32"]
    return models


def bench_towers(shape: str, ckpt: Path, bundle: Path, work: Path, *, batch: int, text_batch: int, device: str,
                 seconds: float, rounds: int, with_fp32: bool, extra_variants: bool, text: bool) -> dict:
    import torch

    manifest = json.loads((bundle / "manifest.json").read_text())
    side = int(json.loads((ckpt / "config.json").read_text())["vision_config"]["image_size"])
    rng = np.random.default_rng(0)
    pixels = {"pixel_values": rng.standard_normal((batch, 3, side, side)).astype(np.float32)}
    fp16 = bundle / manifest["variants"]["fp16"]["vision"]
    cases = [OrtCase("ort fp16 bundle, device I/O", fp16, pixels, device=device, mode="device")]
    if device == "cuda":
        cases.append(OrtCase("ort fp16 bundle, device I/O, CUDA graph", fp16, pixels, device=device, mode="device",
                             cuda_graph=True))
        try:
            cases.append(OrtCase("ort fp16 bundle, pinned staging from host", fp16, pixels, device=device,
                                 mode="pinned"))
        except Exception as exc:  # noqa: BLE001 - not every onnxruntime build exposes pinned OrtValues
            REPORT.setdefault("notes", []).append(f"pinned staging: {type(exc).__name__}: {exc}")
    cases.append(OrtCase("ort fp16 bundle, engine Tower.run from host", fp16, pixels, device=device, mode="engine"))
    if extra_variants:
        io16 = fp16_io_graph(bundle, work)
        cases.append(OrtCase("ort fp16 I/O graph, device I/O", io16, pixels, device=device, mode="device", fp16_io=True))
        if device == "cuda":
            cases.append(OrtCase("ort fp16 I/O graph, device I/O, CUDA graph", io16, pixels, device=device,
                                 mode="device", cuda_graph=True, fp16_io=True))
    models = torch_models(ckpt, device)
    cases.append(TorchCase("torch eager .half() (SDPA)", models["half"], pixels, kind="half", device=device,
                           tower="vision"))
    cases.append(TorchCase("torch autocast fp16", models["autocast"], pixels, kind="autocast", device=device,
                           tower="vision"))
    if with_fp32:
        cases.append(TorchCase("torch fp32", models["fp32"], pixels, kind="fp32", device=device, tower="vision"))
    out = {"batch": batch, "image_size": side, "vision_img_per_s": {}}
    best: dict = {}

    def keep():
        out["vision_img_per_s"] = dict(best)
        REPORT.setdefault("towers", {})[shape] = out
        save()

    round_robin(cases, rounds, seconds, best, on_round=keep)
    ref = best.get("torch eager .half() (SDPA)")
    if isinstance(ref, float) and ref:
        out["vision_ratio_vs_torch_eager_half"] = {k: v / ref for k, v in best.items() if isinstance(v, float)}
    del cases
    if text:
        out["text_per_s"] = bench_text(bundle, manifest, models, text_batch, device, seconds, rounds)
    del models
    if device == "cuda":
        torch.cuda.empty_cache()
    REPORT.setdefault("towers", {})[shape] = out
    return out


def bench_text(bundle: Path, manifest: dict, models, batch: int, device: str, seconds: float, rounds: int):
    """Text tower at 77 tokens (every text padded to the context, as the reference pads a batch of
    long captions) and at 16 tokens (a short caption batch as the engine pads it)."""
    rng = np.random.default_rng(1)
    fp16 = bundle / manifest["variants"]["fp16"]["text"]
    res = {}
    for length in (77, 16):
        ids = rng.integers(5, 200, (batch, length)).astype(np.int64)
        ids[:, -1] = 3  # an end token
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        cases = [OrtCase(f"ort fp16 bundle, engine Tower.run, {length} tokens", fp16, feeds, device=device,
                         mode="engine"),
                 TorchCase(f"torch eager .half(), {length} tokens", models["half"], feeds, kind="half",
                           device=device, tower="text"),
                 TorchCase(f"torch autocast fp16, {length} tokens", models["autocast"], feeds, kind="autocast",
                           device=device, tower="text")]
        round_robin(cases, rounds, seconds, res)
    return res


@section("towers B/32", 60)
def towers_b32(work: Path, smoke: bool, device: str):
    ckpt, bundle = export_bundle(work, "B/32", smoke, small_text=False, validate=True)
    REPORT["b32"] = {"checkpoint": str(ckpt), "bundle": str(bundle)}
    bench_towers("B/32", ckpt, bundle, work, batch=16 if smoke else 512, text_batch=16 if smoke else 1024,
                 device=device, seconds=0.2 if smoke else 1.0, rounds=1 if smoke else 2, with_fp32=True,
                 extra_variants=True, text=True)
    return ckpt, bundle


@section("towers L/14@336", 200)
def towers_l14(work: Path, smoke: bool, device: str):
    ckpt, bundle = export_bundle(work, "L/14@336", smoke, small_text=True, validate=False)
    bench_towers("L/14@336", ckpt, bundle, work, batch=8 if smoke else 128, text_batch=8, device=device,
                 seconds=0.2 if smoke else 2.0, rounds=1 if smoke else 2, with_fp32=False, extra_variants=False,
                 text=False)


# --- 3. end to end -----------------------------------------------------------------------------

def _write_one(args):
    from bench_decode import photo_like

    root, i, captions = args
    rng = np.random.default_rng(i)
    w, h = ((640, 480), (1024, 768))[i % 2]
    photo_like(w, h, rng).save(Path(root) / "images" / f"{i:06d}.jpg", quality=90)
    from fixtures_ckpt import DEFAULT_WORDS

    return [" ".join(rng.choice(DEFAULT_WORDS, size=int(rng.integers(6, 14)))) for _ in range(captions)]


def write_dataset(root: Path, n: int, captions: int = 5) -> Path:
    import multiprocessing as mp

    (root / "images").mkdir(parents=True, exist_ok=True)
    with mp.get_context("fork").Pool(os.cpu_count()) as pool:
        rows = pool.map(_write_one, [(str(root), i, captions) for i in range(n)], chunksize=8)
    with open(root / "image_queries.jsonl", "w") as f:
        for i, queries in enumerate(rows):
            f.write(json.dumps({"image_path": f"images/{i:06d}.jpg", "query": queries}) + "\n")
    return root


def clipeval_bench(args: list[str], timeout: float) -> dict:
    from clipeval.engine.bench import run_child

    argv = [sys.executable, "-c", "from clipeval.cli.main import main; main()", "bench"] + args
    log(" ".join(argv[3:]))
    run = run_child(argv, timeout_s=timeout)
    sys.stderr.write(run.stderr[-2500:])
    if run.returncode:
        raise RuntimeError(f"clipeval bench exited {run.returncode}: {run.stderr[-1500:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


@section("end to end", 90)
def end_to_end(work: Path, smoke: bool, device: str, ckpt: Path, bundle: Path, images: int) -> None:
    t0 = time.perf_counter()
    data = write_dataset(work / "ds", images)
    log(f"{images} JPEGs written in {time.perf_counter() - t0:.0f} s")
    provider = "cuda" if device == "cuda" else "cpu"
    precision = "fp16" if device == "cuda" else "fp32"
    common = ["--model", str(bundle), "--data-dir", str(data), "--provider", provider, "--precision", precision,
              "--batch-size", "256" if not smoke else "16", "--quiet"]
    e2e = REPORT.setdefault("end_to_end", {"images": images})
    e2e["threads_vs_reference"] = clipeval_bench(common + ["--decode", "threads", "--vs-reference", "--checkpoint",
                                                           str(ckpt)],
                                                 timeout=max(60, left() - 30))
    save()
    for name, extra in (("processes", ["--decode", "processes"]),
                        ("processes_fast_decode", ["--decode", "processes", "--fast-decode"])):
        if left() < 60:
            e2e[name] = "skipped: budget"
            continue
        try:
            e2e[name] = clipeval_bench(common + extra + ["--no-second-run"], timeout=max(30, left() - 20))
        except Exception as exc:  # noqa: BLE001
            e2e[name] = f"failed: {exc}"
        save()


@section("decode all cores", 45)
def decode_rates(smoke: bool) -> None:
    cpus = os.cpu_count() or 1
    dest = OUT / "decode.json"
    argv = [sys.executable, str(HERE / "bench_decode.py"), "--n", "64" if smoke else "512", "--workers",
            f"{cpus}", "--repeats", "1", "--rates-only", "--json", str(dest)]
    log(" ".join(argv[1:]))
    run = subprocess.run(argv, capture_output=True, text=True, timeout=max(30, left() - 15))
    sys.stderr.write(run.stdout[-3000:] + run.stderr[-1500:])
    REPORT["decode"] = json.loads(dest.read_text()) if dest.exists() else {"stdout": run.stdout[-3000:]}


def main() -> None:
    global OUT, BUDGET
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=480)
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--only", default="b32,e2e,decode,l14",
                    help="comma list of sections: b32 (towers), e2e (needs b32), decode, l14")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks the script, no figures")
    args = ap.parse_args()
    OUT = Path(args.out)
    OUT.mkdir(parents=True, exist_ok=True)
    BUDGET = args.budget_s
    device = "cpu" if args.smoke else "cuda"
    REPORT["args"] = vars(args)
    only = set(args.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    env(args.smoke)
    if not args.smoke and REPORT["sections"].get("env", "").startswith("failed"):
        return
    if "b32" in only:
        got = towers_b32(work, args.smoke, device)
        if got and "e2e" in only:
            end_to_end(work, args.smoke, device, got[0], got[1], 48 if args.smoke else args.images)
    if "decode" in only:
        decode_rates(args.smoke)
    if "l14" in only:
        towers_l14(work, args.smoke, device)
    REPORT["total_s"] = time.perf_counter() - T_START
    save()
    log(f"total {REPORT['total_s']:.0f} s; report in {OUT / 'gpu.json'}")


if __name__ == "__main__":
    main()
