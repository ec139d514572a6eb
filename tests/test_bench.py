"""Smoke tests of bench/: each script's main() at the tiniest settings writes JSON with the expected keys.

No timing is asserted (the numbers depend on the machine); only that the figures exist and are positive.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import (  # noqa: E402
    common,
    cpu_inference,
    data_pipeline,
    data_scale,
    generation,
    make_results,
    mixed_batches,
    nanovlm_peer,
    step_variants,
    train_throughput,
)


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One results folder for the module, so make_results can read what the other tests wrote."""
    return tmp_path_factory.mktemp("bench_results")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> None:
    """One torch thread: tiny models gain nothing from two, and a busy machine makes two stall."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def keep_logging() -> None:
    """The scripts' main() configures logging for a command line; give the other tests theirs back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    names = ("mmgpt", "transformers", "accelerate", "timm", "bench")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)


def read(path: str) -> dict:
    data = json.loads(Path(path).read_text())
    for key in ("device", "device_name", "date", "git_commit", "torch_version", "torch_threads"):
        assert key in data["env"], key
    return data


def positive(record: dict, *keys: str) -> None:
    for key in keys:
        value = record[key]
        assert isinstance(value, (int, float)) and value > 0, (key, value)


def test_train_throughput_default(out_dir: Path) -> None:
    result = train_throughput.run(["--batch-size", "4", "--steps", "1", "--warmup", "0", "--device", "cpu",
                                    "--out-dir", str(out_dir)])
    data = read(result["path"])
    assert data["benchmark"] == "train_throughput"
    assert Path(result["path"]).name == "train_throughput-cpu.json"
    (run,) = data["runs"]
    positive(run, "samples_per_s", "tokens_per_s", "supervised_tokens_per_s", "step_time_s", "peak_memory_bytes",
             "flops_per_step", "flops_per_step_counted", "achieved_tflops", "params_total")
    assert run["mfu"] is None  # no MFU on CPU
    assert run["config"] == "default" and run["batch_size"] == 4
    assert set(run["flops_per_step_by_part"]) == {"text_encoder", "image_encoder", "fusion", "projector", "generator"}


def test_train_throughput_gpu200m_tiny_all_fusions(out_dir: Path) -> None:
    result = train_throughput.run(["--config", "gpu200m", "--tiny", "--fusion", "all", "--batch-size", "2",
                                    "--steps", "1", "--warmup", "0", "--device", "cpu", "--no-count-flops",
                                    "--out-dir", str(out_dir)])
    data = read(result["path"])
    assert [r["fusion"] for r in data["runs"]] == ["weighted_sum", "product", "cross_attention"]
    for run in data["runs"]:
        assert run["precision"] == "bf16" and run["config"] == "gpu200m-tiny"
        assert run["flops_detail"]["parts"]["image_encoder"]["method"] == "analytic (ViT)"
        positive(run, "samples_per_s", "tokens_per_s", "step_time_s", "flops_per_step")


def test_generation(out_dir: Path) -> None:
    result = generation.run(["--batch-sizes", "1", "2", "--new-tokens", "2", "3", "--repeats", "1", "--warmup", "0",
                              "--device", "cpu", "--out-dir", str(out_dir)])
    data = read(result["path"])
    assert data["benchmark"] == "generation"
    assert len(data["runs"]) == 4
    for run in data["runs"]:
        positive(run, *(f"{mode}_s" for mode in generation.MODES),
                 *(f"{mode}_tokens_per_s" for mode in generation.MODES), "cache_speedup", "answer_over_bare")
    ratios = data["ratios"]
    assert ratios["cache_speedup"]["new_tokens"] == 3
    assert set(ratios["cache_speedup"]["by_batch_size"]) == {"1", "2"}
    positive(ratios["cache_speedup"], "min")
    positive(ratios["batch_scaling"], "min")
    positive(ratios["answer_over_bare"], "max")
    assert set(data["answer_breakdown"]["stages_s"]) == {"preprocess", "encode", "decode_loop", "detokenize"}
    assert data["cache_outputs_match"] is True  # fp32 greedy decoding: identical with and without the cache


def test_cpu_inference_tiny(out_dir: Path, tmp_path: Path) -> None:
    result = cpu_inference.run(["--tiny", "--configs", "gpu200m", "nanovlm222m", "--paths", "fp32-hf", "fp32",
                                 "int8", "--batch-sizes", "1", "2", "--new-tokens", "2", "3", "--repeats", "1",
                                 "--threads", "1", "--workdir", str(tmp_path), "--out-dir", str(out_dir)])
    data = read(result["path"])
    assert data["benchmark"] == "cpu_inference" and "CPUs" in data["cpu"]
    for config in data["results"]:
        assert len(config["points"]) == 3 * 2 * 2
        for point in config["points"]:
            positive(point, "ttft_s", "decode_tokens_per_s", "bound_tokens_per_s", "decode_x_fp32_hf")
        int8 = next(p for p in config["points"] if p["path"] == "int8")
        fp32 = next(p for p in config["points"] if p["path"] == "fp32")
        assert int8["decode_bytes_per_step"] < 0.35 * fp32["decode_bytes_per_step"]  # int8 weights and head
        positive(config["overheads"]["ratios"], "fp32_kv_cache_speedup", "int8_answer_over_generate")
    assert Path(result["path"]).with_suffix(".png").stat().st_size > 10_000  # the plot of every path


@pytest.mark.slow
def test_cpu_inference_onnx_paths_tiny(out_dir: Path, tmp_path: Path) -> None:
    result = cpu_inference.run(["--tiny", "--configs", "gpu200m", "--paths", "fp32", "onnx", "onnx-int8",
                                 "--batch-sizes", "1", "--new-tokens", "2", "3", "--repeats", "1", "--threads", "1",
                                 "--no-overheads", "--memory", "--workdir", str(tmp_path), "--out-dir", str(out_dir)])
    points = read(result["path"])["results"][0]["points"]
    memory = read(result["path"])["results"][0]["memory"]
    assert set(memory) == {"fp32", "onnx", "onnx-int8"}  # every path's RSS answering from its folder
    assert memory["onnx-int8"]["folder_bytes"] < memory["onnx"]["folder_bytes"]
    assert all(m["peak_rss_bytes"] >= 0.95 * m["rss_after_answer_bytes"] > 0 for m in memory.values())
    assert [p["path"] for p in points[:3]] == ["fp32", "onnx", "onnx-int8"]
    for point in points:
        positive(point, "ttft_s", "decode_tokens_per_s", "decode_x_fp32", "total_x_fp32")
    onnx, int8 = points[1], points[2]
    assert int8["decode_bytes_per_step"] < 0.35 * onnx["decode_bytes_per_step"]  # int8 matmul weights
    assert json.loads((tmp_path / "gpu200m" / "onnx-int8" / "manifest.json").read_text())["dtype"] == "int8"


def test_data_pipeline(out_dir: Path) -> None:
    pytest.importorskip("easy_vqa")
    result = data_pipeline.run(["--batch-size", "4", "--batches", "2", "--workers", "0", "--max-examples", "8",
                                 "--train-steps", "1", "--cache-steps", "1", "--device", "cpu",
                                 "--out-dir", str(out_dir)])
    data = read(result["path"])
    assert [(p["mode"], p["workers"]) for p in data["pipeline"]] == [("decode", 0), ("cached_pixels", 0)]
    for row in data["pipeline"]:
        positive(row, "images_per_s", "ratio_to_training")
    positive(data, "training_samples_per_s")
    positive(data["ratio"], "best_decode")
    positive(data["feature_cache"], "step_with_encoder_s", "step_with_cached_features_s", "speedup",
             "feature_bytes_per_image")


# the main job's two training sets, a few examples of each: mixed batches draw from both
TWO_SETS = ("data.train=[{format: easy_vqa, split: train, max_examples: 48, weight: 3.0}, "
            "{format: shapes_captions, split: train, max_examples: 16, weight: 1.0}]")


def test_mixed_batches(out_dir: Path) -> None:
    result = mixed_batches.run(["--steps", "1", "--warmup", "0", "--out-dir", str(out_dir), "batch_size=8",
                                TWO_SETS, "data.eval=[]", "cpu_threads=1"])
    data = read(result["path"])
    assert set(data["kinds"]) == {"one set per batch", "mixed, split by answer length", "mixed, one pass"}
    for figures in data["kinds"].values():
        positive(figures, "median_s", "ratio_to_one_set")
    assert data["kinds"]["one set per batch"]["ratio_to_one_set"] == 1.0


def test_step_variants_time_each_variant_on_the_same_batches(out_dir: Path) -> None:
    result = step_variants.run(["--steps", "1", "--warmup", "0", "--out-dir", str(out_dir), "--common",
                                "batch_size=8", TWO_SETS, "data.eval=[]", "cpu_threads=1", "--variant", "fullres",
                                "model.image_encoder.name=mmgpt_tiny_cnn_fullres", "--variant", "k2",
                                "data.questions_per_image=2", "--variant", "b4", "batch_size=4"])
    data = read(result["path"])
    variants = data["variants"]
    assert set(variants) == {"default", "fullres", "k2", "b4"} and variants["default"]["ratio_to_default"] == 1.0
    # a variant with another batch size times batches of its own size, not the default's
    assert variants["b4"]["batch_rows"] == 4 and variants["default"]["batch_rows"] == 8
    positive(variants["fullres"], "median_s", "ratio_to_default")
    positive(variants["k2"], "median_s", "ratio_to_default")
    # the variant's overrides reached its model: another CNN, with another parameter count
    assert variants["fullres"]["parameters"] != variants["default"]["parameters"]


def test_nanovlm_peer_needs_a_checkout(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="not a nanoVLM checkout"):
        nanovlm_peer.run(["--nanovlm", str(tmp_path), "--tiny", "--device", "cpu", "--out-dir", str(tmp_path)])


@pytest.mark.skipif(not os.environ.get("NANOVLM"), reason="set NANOVLM to a huggingface/nanoVLM checkout")
def test_nanovlm_peer_tiny(out_dir: Path) -> None:
    result = nanovlm_peer.run(["--nanovlm", os.environ["NANOVLM"], "--tiny", "--drop-padding-mask",
                                "--batch-size", "2", "--steps", "1", "--warmup", "0", "--device", "cpu",
                                "--no-count-flops", "--out-dir", str(out_dir)])
    data = read(result["path"])
    positive(data["nanovlm"], "samples_per_s", "tokens_per_s", "step_time_s", "flops_per_step")
    positive(data["mmgpt"], "samples_per_s")
    positive(data, "samples_per_s_ratio_mmgpt_over_nanovlm")


def test_make_results(out_dir: Path, tmp_path: Path) -> None:
    if not list(out_dir.glob("*.json")):
        pytest.skip("reads the JSON the other tests of this module write; run them together")
    output = tmp_path / "RESULTS.md"
    text = make_results.run(["--results-dir", str(out_dir), "--output", str(output)])
    assert output.read_text() == text
    assert "## Targets" in text and "## Training throughput" in text and "## Generation" in text
    # the CPU run has no H100 result: MFU is "not measured"; the generation targets get a status
    assert make_results.NOT_MEASURED in text
    assert "could not render" not in text


def test_make_results_keeps_what_it_does_not_generate(tmp_path: Path) -> None:
    output = tmp_path / "RESULTS.md"
    kept = "## Data at scale\n\nhand-written, measured by hand\n"
    serving = "<!-- serve:start -->\n## Serving\n\nwritten by bench/serve.py\n<!-- serve:end -->\n"
    output.write_text(f"<!-- {make_results.GENERATED}:start -->\n# old generated text\n"
                      f"<!-- {make_results.GENERATED}:end -->\n\n{serving}\n{kept}")
    (tmp_path / "results").mkdir()
    text = make_results.run(["--results-dir", str(tmp_path / "results"), "--output", str(output)])
    assert output.read_text() == text
    assert "old generated text" not in text and "## Targets" in text
    assert text.endswith(f"<!-- {make_results.GENERATED}:end -->\n\n{serving}\n{kept}")
    # bench/serve.py's section is replaced in place, the rest kept
    common.write_marked_section(output, "serve", "## Serving\n\nnew")
    assert output.read_text() == text.replace("written by bench/serve.py", "new")
    # a file without the markers is generated whole, as before
    output.write_text("# an old, all-generated file\n")
    assert make_results.run(["--results-dir", str(tmp_path / "results"), "--output", str(output)]).startswith(
        f"<!-- {make_results.GENERATED}:start -->\n# Benchmark results")


def test_flop_formula() -> None:
    # nanoGPT / PaLM: forward 2N + 4*L*d*T per token
    assert common.transformer_forward_flops(1000, 2, 8, [4]) == 2 * 1000 * 4 + 4 * 2 * 8 * 4 * 4
    assert common.training_multiplier(True, False) == 3
    assert common.training_multiplier(False, True) == 2
    assert common.training_multiplier(False, False) == 1


def test_data_scale_set_is_generated_once_and_read_as_a_stream(tmp_path: Path) -> None:
    from mmgpt.data.formats import read_dataset
    from mmgpt.data.spec import DatasetSpec
    from mmgpt.images import load_image

    folder = data_scale.generate(tmp_path / "set", 2 * data_scale.ROWS_PER_SHARD)
    shards = sorted(folder.glob("train-*.parquet"))
    assert len(shards) == 2
    written = shards[0].stat().st_mtime_ns
    data_scale.generate(folder, 2 * data_scale.ROWS_PER_SHARD)
    assert shards[0].stat().st_mtime_ns == written, "a matching set is reused, not rewritten"
    path = data_scale.subset_path(folder, data_scale.ROWS_PER_SHARD)
    assert path == str(shards[0]) and data_scale.subset_path(folder, 2 * data_scale.ROWS_PER_SHARD) == str(folder)
    stream = read_dataset(DatasetSpec(format="hf", path=path, streaming=True, shuffle_buffer=0))
    for example in stream.head(4):
        image = load_image(example.image)
        assert image.size == (64, 64) and example.answer in (*data_scale.COLORS, *data_scale.SHAPES)
        # the answer is what the image shows: its colour is the shape's, or the shape is named
        if example.answer in data_scale.COLORS:
            assert data_scale.COLORS[example.answer] in {c for _, c in image.getcolors()}


def test_targets_table_gives_each_target_the_newest_run_only() -> None:
    def onnx_run(name: str, date: str, ratio: float) -> dict:
        point = {"path": "onnx", "batch_size": 1, "new_tokens": 128, "total_x_fp32": ratio, "total_s": 5.0}
        return {"_file": name, "benchmark": "cpu_inference", "args": {},
                "env": {"device_name": "CPU X", "date": date},
                "results": [{"config": "gpu200m", "points": [point]}]}

    # the older run (met) sorts after the newer one (missed) by file name, as the real files did
    results = [onnx_run("cpu_inference-b-cpu.json", "2026-12-06T21:00:00+00:00", 0.67),
               onnx_run("cpu_inference-a-cpu.json", "2026-12-06T11:00:00+00:00", 0.54)]
    rows = [line for line in make_results.targets_section(results).splitlines() if line.startswith("| ONNX runtime")]
    assert len(rows) == 1
    assert "0.67x" in rows[0] and "**missed**" in rows[0] and "`cpu_inference-b-cpu.json`, 2026-12-06" in rows[0]
    assert "0.54x" not in rows[0] and "earlier runs: `cpu_inference-a-cpu.json` met" in rows[0]


def test_targets_table_reads_the_230m_cache_and_answer_targets_from_cpu_inference() -> None:
    ratios = {"fp32_kv_cache_speedup": 4.96, "int8_kv_cache_speedup": 5.25,
              "fp32_answer_over_generate": 1.017, "int8_answer_over_generate": 0.917}
    data = {"_file": "cpu_inference-cpu.json", "benchmark": "cpu_inference", "args": {},
            "env": {"device_name": "CPU X", "date": "2026-12-06T20:00:00+00:00"},
            "results": [{"config": "gpu200m", "points": [],
                         "overheads": {"batch_size": 1, "new_tokens": 128, "ratios": ratios}}]}
    lines = make_results.targets_section([data]).splitlines()
    cache = next(line for line in lines if line.startswith("| KV cache >= 5x") and "230M" in line)
    answer = next(line for line in lines if line.startswith("| answer() within 5%") and "230M" in line)
    assert "fp32 4.96x, int8 5.25x" in cache and "**missed**" in cache
    assert "fp32 1.017, int8 0.917" in answer and "**met**" in answer


def test_int8_decode_target_takes_the_faster_int8_path_and_needs_prefill_no_slower() -> None:
    def point(path: str, tokens_per_s: float, ttft: float) -> dict:
        return {"path": path, "batch_size": 1, "new_tokens": 128, "decode_tokens_per_s": tokens_per_s,
                "ttft_s": ttft, "share_of_bound": 0.5}

    def verdict(*points: dict) -> make_results.Verdict:
        return make_results.target_int8_decode({"args": {}, "results": [{"config": "gpu200m",
                                                                         "points": list(points)}]})

    fp32 = point("fp32", 20.0, 0.6)
    met = verdict(fp32, point("int8", 40.0, 0.3), point("onnx-int8", 62.0, 0.2))
    assert met.met and met.value.startswith("3.10x fp32 with onnx-int8") and "int8 2.00x" in met.value
    missed = verdict(fp32, point("int8", 40.0, 0.3), point("onnx-int8", 55.0, 0.2))
    assert not missed.met and missed.value.startswith("2.75x fp32 with onnx-int8")
    assert not verdict(fp32, point("onnx-int8", 70.0, 0.7)).met  # a slower first token does not count
    assert verdict(fp32, point("int8", 61.0, 0.3)).met


def _running(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (an exited child that no one reaped yet is a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="the server follows its bench through Linux's PR_SET_PDEATHSIG")
def test_a_killed_bench_leaves_no_server_running(tmp_path: Path) -> None:
    import subprocess
    import time

    from tiny import build, tiny_config

    build(tiny_config()).save_pretrained(tmp_path / "model")
    script = (f"import sys, time; sys.path.insert(0, {str(REPO)!r})\n"
              "from bench.serve import start_server\n"
              f"process, url = start_server({str(tmp_path / 'model')!r}, 'batching', 1)\n"
              "print(process.pid, flush=True)\n"
              "time.sleep(300)\n")
    bench = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        server = int(bench.stdout.readline())  # start_server gives up after 120 s, and then this reads ''
        assert _running(server)
    finally:
        bench.kill()  # SIGKILL: no cleanup runs in the bench
        bench.wait()
    deadline = time.monotonic() + 30
    while _running(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(server)
