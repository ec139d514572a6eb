"""Training threads for the load met at start-up: other processes' busy cores are measured, not guessed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import make_jsonl, tiny_config

from mmgpt.devices import SlowdownNotice, ThreadWatch, busy_cores_of_others, cpu_jiffies, threads_beside
from mmgpt.training import loop


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_a_core_other_processes_keep_busy_is_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mmgpt.devices.available_cores", lambda: 2)
    assert threads_beside(2, None) == 2  # unknown load: the configured count
    assert threads_beside(2, 0.3) == 2
    assert threads_beside(2, 1.0) == 1
    assert threads_beside(2, 3.0) == 1
    monkeypatch.setattr("mmgpt.devices.available_cores", lambda: 8)
    assert threads_beside(8, 1.2) == 7
    assert threads_beside(4, 1.0) == 4  # fewer threads than free cores already
    assert threads_beside(1, 5.0) == 1


def test_another_spinning_process_counts_and_this_ones_work_does_not() -> None:
    if cpu_jiffies() is None:
        pytest.skip("/proc/stat does not describe this process's CPUs here")
    start, started = cpu_jiffies(), time.monotonic()
    subprocess.run([sys.executable, "-c", "import time\nt = time.time() + 1.5\nwhile time.time() < t: pass"],
                   check=True, timeout=60)
    assert busy_cores_of_others(start, time.monotonic() - started) >= 0.6
    # this process's own work is read, so that it is not counted as another's load
    before = cpu_jiffies()
    stop = time.time() + 1.5
    while time.time() < stop:
        pass
    after = cpu_jiffies()
    hz = os.sysconf("SC_CLK_TCK")
    assert (after[1] - before[1]) / hz >= 0.9
    # /proc/stat is read just before /proc/self/stat, and each counts its own ticks: the process's total may
    # run a few ticks ahead of the machine's (149 against 150 in one CI run), never by more
    assert after[0] - before[0] >= after[1] - before[1] - 3


def simulate(watch: ThreadWatch, seconds_per_threads: list[dict[int, float]], steps_each: int) -> list[int]:
    """Drive `watch` through phases of step times per thread count (every 7th step slower) -> the counts used."""
    used = []
    for phase in seconds_per_threads:
        for i in range(steps_each):
            used.append(watch.current)
            changed = watch.step_done(phase[watch.current] * (1.4 if i % 7 == 0 else 1.0) * (1 + 0.05 * (i % 3)))
            assert changed is None or changed == watch.current
    return used


QUIET, BUSY = {2: 0.20, 1: 0.33}, {2: 0.60, 1: 0.30}


def test_a_quiet_run_never_changes_its_threads() -> None:
    assert set(simulate(ThreadWatch(2, 2), [QUIET], 3000)) == {2}


def test_a_neighbour_moves_the_run_to_one_thread_and_back_when_it_leaves() -> None:
    watch = ThreadWatch(2, 2)
    used = simulate(watch, [QUIET, BUSY, QUIET], 600)
    quiet, busy, after = used[:600], used[600:1200], used[1200:]
    assert set(quiet) == {2}
    assert busy.index(1) <= 2 * watch.window  # seen within two windows
    assert busy[100:].count(2) <= 3 * watch.window  # a few tries of both threads, each lost
    assert after[-100:] == [2] * 100  # back once the neighbour is gone


def test_a_run_started_beside_a_neighbour_returns_to_all_threads() -> None:
    used = simulate(ThreadWatch(1, 2), [BUSY, QUIET], 500)
    assert used[:200] == [1] * 200 and used[-100:] == [2] * 100


def test_a_fixed_thread_count_says_once_why_its_steps_crawl(caplog: pytest.LogCaptureFixture) -> None:
    notice = SlowdownNotice(2)
    jitter = [1.0, 1.4, 1.05, 1.1, 0.95, 1.2, 1.0]  # a quiet run's steps vary, and its first steps are slower
    with caplog.at_level("WARNING", logger="mmgpt.devices"):
        for i in range(400):
            notice.step_done((3.0 if i < 3 else 0.2) * jitter[i % 7])
        assert not caplog.records
        for i in range(400):  # a neighbour arrives: steps take 5x as long
            notice.step_done(1.0 * jitter[i % 7])
    assert len(caplog.records) == 1 and "cpu_threads=1" in caplog.records[0].getMessage()
    assert "another process" in caplog.records[0].getMessage()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_jsonl(tmp_path_factory.mktemp("data"))


def test_a_run_records_its_choice_and_a_resumed_run_keeps_it(tmp_path: Path, data: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    # start-up met a busy neighbour: one thread, recorded with the checkpoint
    monkeypatch.setattr(loop, "threads_beside", lambda threads, others: 1)
    config = tiny_config(tmp_path, data, out, max_steps=4, stop_at_step=2, follow_cpu_load=True)
    assert loop.run_training(["--config", str(config)]) == {"stopped_at_step": 2}
    state = json.loads((out / "checkpoints" / "step_2" / "trainer_state.json").read_text())
    assert state["cpu_threads"] == 1
    # resumed on a quiet machine: it keeps the count it rounded with
    monkeypatch.setattr(loop, "threads_beside", lambda threads, others: 2)
    torch.set_num_threads(2)
    loop.run_training(["--config", str(tiny_config(tmp_path, data, out, max_steps=4, follow_cpu_load=True)),
                       "--resume", "latest"])
    assert torch.get_num_threads() == 1


def test_by_default_the_load_never_changes_the_threads(tmp_path: Path, data: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "threads_beside", lambda threads, others: 1)
    out = tmp_path / "run"
    torch.set_num_threads(2)
    loop.run_training(["--config", str(tiny_config(tmp_path, data, out, max_steps=2, save_every=2))])
    assert torch.get_num_threads() == 2
    assert json.loads((out / "checkpoints" / "step_2" / "trainer_state.json").read_text())["cpu_threads"] == 0


def test_a_default_run_watches_its_steps_for_a_neighbour(tmp_path: Path, data: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []

    class Recording(SlowdownNotice):
        def step_done(self, seconds: float) -> None:
            seen.append(seconds)
            super().step_done(seconds)

    monkeypatch.setattr(loop, "SlowdownNotice", Recording)
    torch.set_num_threads(2)
    loop.run_training(["--config", str(tiny_config(tmp_path, data, tmp_path / "a", max_steps=3, save_every=0))])
    assert len(seen) == 3 and all(s > 0 for s in seen)
    # follow_cpu_load acts on a neighbour itself instead
    seen.clear()
    loop.run_training(["--config", str(tiny_config(tmp_path, data, tmp_path / "b", max_steps=3, save_every=0,
                                                   follow_cpu_load=True))])
    assert not seen


@pytest.mark.parametrize("others", [0.0, 1.0])
def test_a_default_run_started_beside_a_busy_process_says_so(tmp_path: Path, data: Path, others: float,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(loop, "busy_cores_of_others", lambda start, seconds: others)
    monkeypatch.setattr("mmgpt.devices.available_cores", lambda: 2)
    torch.set_num_threads(2)
    with caplog.at_level("WARNING", logger="mmgpt.devices"):
        loop.run_training(["--config", str(tiny_config(tmp_path, data, tmp_path / "run", max_steps=2,
                                                       save_every=0))])
    warned = [r for r in caplog.records if "busy during start-up" in r.getMessage()]
    assert len(warned) == (1 if others else 0)
    assert torch.get_num_threads() == 2  # said, not acted on: the default keeps its threads


def test_a_set_thread_count_is_never_changed(tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "threads_beside", lambda threads, others: 1)
    out = tmp_path / "run"
    loop.run_training(["--config", str(tiny_config(tmp_path, data, out, max_steps=2, save_every=2, cpu_threads=2,
                                                   follow_cpu_load=True))])
    assert torch.get_num_threads() == 2
    assert json.loads((out / "checkpoints" / "step_2" / "trainer_state.json").read_text())["cpu_threads"] == 0
