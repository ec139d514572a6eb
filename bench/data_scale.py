"""Real data at real scale: a streamed Parquet set of up to 1,000,000 rows, from `accelerate launch` to step one.

1. The set: 1,000,000 easy-VQA-like rows (a coloured shape, "what color is the shape?" / "what shape is in the
   image?") in 100 Parquet shards of 10,000 rows, each row a small PNG (64 px, ~300 bytes) with a datasets
   `Image` feature. It is generated once into ``$MMGPT_CACHE/bench/data_scale`` (reused while its manifest
   matches) from 4,096 distinct PNGs drawn once, so generating takes seconds per 100,000 rows. The 10k and
   100k sets are the first 1 and 10 shards of the same files (a glob), the 1M set the whole folder.
2. Start-up and memory: for each size, the README's command on that set, streamed,

       accelerate launch --config_file configs/accelerate/cpu.yaml train.py data.train=[{format: hf, ...}]
           stop_at_step=1 ...

   timed from this process until the progress bar shows step 1, with the peak RSS of the training process
   (its own high-water mark, and the largest sum over it and its dataloader workers, sampled every 50 ms).
3. Loading vs consumption: images/s of the streamed training loader (`build_stream_loader`: rows read in the
   main process, PNG decode + transform + collate in the workers) with 0, 1 and 2 workers, against the
   samples/s of training steps of the default model on the same batches. The rate runs to the last batch
   received: closing a stream mid-pass makes datasets wait 5 s for pyarrow's reader threads
   (SLEEP_TIME_ON_THREADS_SHUTDOWN), reported apart as the close time, not as loading.

    python -m bench.data_scale                       # generate (first time), then all three measurements
    python -m bench.data_scale --sizes 10000 --workers 0 2
"""
from __future__ import annotations

import gc
import io
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench import cli, common, startup
from mmgpt.saving import write_json

logger = logging.getLogger("bench.data_scale")

NAME = "data_scale"
REPO = Path(__file__).resolve().parent.parent
ROWS_PER_SHARD = 10_000
DISTINCT_IMAGES = 4096
SIZES = (10_000, 100_000, 1_000_000)
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40),
          "black": (20, 20, 20), "gray": (128, 128, 128), "teal": (0, 128, 128), "brown": (140, 80, 30)}
SHAPES = ("circle", "rectangle", "triangle")

TABLE_STARTUP = [("rows", "rows", ","), ("shards", "shards", ""),
                 ("launch_to_first_step_s", "launch to step 1 (s)", ".1f"),
                 ("in_process_s", "in the process (s)", ".1f"), ("peak_rss", "peak RSS, trainer", ""),
                 ("peak_rss_with_workers", "peak RSS, with workers", "")]
TABLE_LOADING = [("workers", "workers", ""), ("images_per_s", "images/s", ".0f"),
                 ("first_batch_s", "first batch (s)", ".2f"), ("x_consumption", "x training consumption", ".2f"),
                 ("close_s", "closing the stream (s)", ".1f")]


# ----------------------------------------------------------------------------- the set


def _images() -> list[tuple[bytes, str, str]]:
    """DISTINCT_IMAGES (PNG bytes, color, shape): one shape of one colour at a size and place of its own."""
    from PIL import Image, ImageDraw

    out = []
    colors = list(COLORS)
    for i in range(DISTINCT_IMAGES):
        color, shape = colors[i % len(colors)], SHAPES[i // len(colors) % len(SHAPES)]
        size, x, y = 16 + i % 24, i * 7 % 24, i * 13 % 24
        image = Image.new("RGB", (64, 64), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        box = (x, y, x + size, y + size)
        if shape == "circle":
            draw.ellipse(box, fill=COLORS[color])
        elif shape == "rectangle":
            draw.rectangle(box, fill=COLORS[color])
        else:
            draw.polygon([(x, y + size), (x + size // 2, y), (x + size, y + size)], fill=COLORS[color])
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        out.append((buffer.getvalue(), color, shape))
    return out


def generate(folder: Path, rows: int) -> Path:
    """`rows` rows in Parquet shards of ROWS_PER_SHARD under `folder` (kept when its manifest says so)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = folder / "manifest.json"
    wanted = {"rows": rows, "rows_per_shard": ROWS_PER_SHARD, "distinct_images": DISTINCT_IMAGES, "version": 1}
    if manifest.is_file() and json.loads(manifest.read_text()) == wanted:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()
    start = time.perf_counter()
    images = _images()
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answer": datasets.Value("string"), "id": datasets.Value("int64")})
    schema = features.arrow_schema  # carries the Image feature in its metadata, so datasets reads it back as one
    for shard in range(-(-rows // ROWS_PER_SHARD)):
        ids = range(shard * ROWS_PER_SHARD, min(rows, (shard + 1) * ROWS_PER_SHARD))
        picks = [images[(i * 2654435761) % DISTINCT_IMAGES] for i in ids]  # a scattered walk over the images
        shape_question = [i % 2 == 1 for i in ids]
        table = pa.table({
            "image": [{"bytes": png, "path": None} for png, _, _ in picks],
            "question": ["what shape is in the image?" if s else "what color is the shape?" for s in shape_question],
            "answer": [shape if s else color for (_, color, shape), s in zip(picks, shape_question)],
            "id": list(ids)}, schema=schema)
        # as real images are: stored once per row and incompressible (no dictionary folding the repeated PNGs)
        pq.write_table(table, folder / f"train-{shard:05d}.parquet", row_group_size=1000, use_dictionary=False,
                       compression={"image": "none", "question": "snappy", "answer": "snappy", "id": "snappy"})
    write_json(manifest, wanted)
    logger.info("generated %d rows in %s in %.1f s", rows, folder, time.perf_counter() - start)
    return folder


def subset_path(folder: Path, rows: int) -> str:
    """The first `rows` rows of the generated set: a glob over its first shards, or the whole folder."""
    shards = -(-rows // ROWS_PER_SHARD)
    total = len(list(folder.glob("train-*.parquet")))
    if shards >= total:
        return str(folder)
    if shards == 1:
        return str(folder / "train-00000.parquet")
    if shards == 10:
        return str(folder / "train-0000?.parquet")
    raise ValueError(f"--sizes: {rows} rows is not 10,000, 100,000 or the whole set")


def train_overrides(path: str) -> list[str]:
    """train.py overrides that train the default model on the streamed set (and evaluate on its first rows)."""
    train = [{"format": "hf", "path": path, "streaming": True, "name": "scale"}]
    evals = [{"format": "hf", "path": path, "streaming": True, "name": "scale_eval", "max_examples": 64}]
    return [f"data.train={json.dumps(train)}", f"data.eval={json.dumps(evals)}"]


# ----------------------------------------------------------------------------- start-up and memory


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process visible in /proc."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        table[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    return table


def _status_kib(pid: int, field: str) -> int:
    """A /proc/PID/status memory field in KiB (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    """Samples, every `interval` s, the training process (the child of the launcher `root`) for its peak RSS
    (VmHWM) and the RSS summed over it and its dataloader workers."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak_kib = self.peak_with_workers_kib = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            table = _proc_table()
            under: set[int] = set()
            for pid in table:
                p = pid
                while p in table and p != self.root:
                    p = table[p][0]
                if p == self.root and pid != self.root:
                    under.add(pid)
            trainers = [p for p in under if table[p][0] == self.root]  # the launcher's child runs train.py
            for trainer in trainers:
                self.peak_kib = max(self.peak_kib, _status_kib(trainer, "VmHWM"))
                family = {trainer} | {p for p in under if table[p][0] == trainer}
                self.peak_with_workers_kib = max(self.peak_with_workers_kib,
                                                 sum(_status_kib(p, "VmRSS") for p in family))
            self.done.wait(self.interval)


def launch(path: str, cache: Path, workers: int, extra: list[str]) -> dict[str, Any]:
    """The README's training command on the streamed set: seconds to step 1 and peak RSS of the trainer."""
    def watch(pid: int) -> Callable[[], dict[str, Any]]:
        sampler = RssSampler(pid)
        sampler.start()

        def peaks() -> dict[str, Any]:
            sampler.done.set()
            sampler.join()
            return {"peak_rss_bytes": sampler.peak_kib * 1024,
                    "peak_rss_with_workers_bytes": sampler.peak_with_workers_kib * 1024}
        return peaks

    return startup.launch(REPO, cache, [f"data.num_workers={workers}", *train_overrides(path), *extra],
                          python=sys.executable, watch=watch)


# ----------------------------------------------------------------------------- loading vs consumption


def loader_rate(path: str, workers: int, batches: int) -> dict[str, Any]:
    """Images/s of the training loop's streamed loader on the set, after its first batch (default model)."""
    from types import SimpleNamespace

    from bench import workloads
    from mmgpt.config import PromptTemplates
    from mmgpt.training.config import load_train_config
    from mmgpt.training.loop import build_stream_loader, read_splits

    cfg = load_train_config("default", [f"data.num_workers={workers}", *train_overrides(path)])
    model = workloads.build_model(cfg.model)
    templates = PromptTemplates.from_config(cfg.model)
    checked = [(name, data, spec.weight, None)
               for (name, data), spec in zip(read_splits(cfg.data.train, templates), cfg.data.train)]
    loader, _ = build_stream_loader(cfg, checked, model.processor, SimpleNamespace(process_index=0, num_processes=1))
    start = time.perf_counter()
    first = None
    images = 0
    batches_in = iter(loader)
    for count, batch in enumerate(batches_in, start=1):
        if first is None:
            first = time.perf_counter()
        else:
            images += batch["pixel_values"].shape[0]
        if count > batches:
            break
    end = time.perf_counter()
    # closing a stream mid-pass is not loading: datasets then waits SLEEP_TIME_ON_THREADS_SHUTDOWN (5 s) for
    # pyarrow's reader threads, which a rate taken after the loop would count as loading time
    del batch, batches_in
    gc.collect()
    return {"workers": workers, "batches": batches, "batch_size": cfg.batch_size, "first_batch_s": first - start,
            "images_per_s": images / (end - first), "close_s": time.perf_counter() - end}


def consumption(steps: int) -> float:
    """Samples/s of training steps of the default config (bench/train_throughput.py's measurement)."""
    from bench import train_throughput

    result = train_throughput.measure("default", steps=steps, warmup=2, device=torch.device("cpu"),
                                      count_flops=False)
    return float(result["samples_per_s"])


# ----------------------------------------------------------------------------- main


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Generate the set (once), then start-up + memory per size and loading vs consumption; write the JSON."""
    parser = cli.new_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="loader workers to measure")
    parser.add_argument("--startup-workers", type=int, default=2, help="data.num_workers of the launched runs")
    parser.add_argument("--batches", type=int, default=20, help="timed loader batches per measurement")
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per consumption measurement")
    parser.add_argument("--rounds", type=int, default=2, help="loader and consumption measured alternately")
    parser.add_argument("--skip-startup", action="store_true")
    parser.add_argument("--skip-loading", action="store_true")
    cli.add_run_options(parser)
    args = parser.parse_args(argv)
    args.device = "cpu"
    cli.setup(args)
    import statistics

    from mmgpt.data.records import default_cache_root

    cache = default_cache_root()
    folder = generate(cache / "bench" / NAME, max(SIZES))  # the smaller sets are its first shards
    startup = []
    for rows in ([] if args.skip_startup else args.sizes):
        path = subset_path(folder, rows)
        result = launch(path, cache, args.startup_workers, [])
        startup.append({"rows": rows, "shards": -(-rows // ROWS_PER_SHARD), **result,
                        "peak_rss": common.human_bytes(result["peak_rss_bytes"]),
                        "peak_rss_with_workers": common.human_bytes(result["peak_rss_with_workers_bytes"])})
        logger.info("%d rows: %.1f s to step 1, peak RSS %s (%s with workers)", rows,
                    result["launch_to_first_step_s"], startup[-1]["peak_rss"], startup[-1]["peak_rss_with_workers"])
    loading: list[dict[str, Any]] = []
    consumed: list[float] = []
    if not args.skip_loading:
        path = subset_path(folder, max(args.sizes))
        samples: dict[int, list[dict[str, Any]]] = {w: [] for w in args.workers}
        for _ in range(args.rounds):
            consumed.append(consumption(args.steps))
            logger.info("training consumes %.0f samples/s", consumed[-1])
            for workers in args.workers:
                samples[workers].append(loader_rate(path, workers, args.batches))
                logger.info("%d worker(s): %.0f images/s", workers, samples[workers][-1]["images_per_s"])
        rate = statistics.median(consumed)
        for workers, runs in samples.items():
            images_per_s = statistics.median(r["images_per_s"] for r in runs)
            loading.append({"workers": workers, "images_per_s": images_per_s,
                            "first_batch_s": statistics.median(r["first_batch_s"] for r in runs),
                            "x_consumption": images_per_s / rate,
                            "close_s": statistics.median(r["close_s"] for r in runs),
                            "rounds": [round(r["images_per_s"]) for r in runs]})
    device = torch.device("cpu")
    if startup:
        common.print_table(f"streamed Parquet set, launch to step 1 on {common.device_name(device)}", startup,
                           TABLE_STARTUP)
    if loading:
        common.print_table(f"loader images/s vs training's {statistics.median(consumed):.0f} samples/s",
                           loading, TABLE_LOADING)
    return cli.write(NAME, NAME, device, args, {"startup": startup, "loading": loading,
                                                 "consumption_samples_per_s": consumed})


main = common.exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
