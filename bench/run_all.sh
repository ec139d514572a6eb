#!/usr/bin/env bash
# Run every benchmark and regenerate bench/RESULTS.md.
#
#   bench/run_all.sh          # CPU sizes: default config, gpu200m --tiny, nanoVLM peer --tiny
#   bench/run_all.sh gpu      # GPU sizes: the ~200M config, all fusions, compile, nanoVLM at full size
#
# Environment: PYTHON (default: .venv/bin/python if present, else python), BENCH_THREADS (torch threads
# on CPU, default 1: on a busy 2-core machine two OpenMP threads stall each other), NANOVLM (path to a
# huggingface/nanoVLM checkout; the peer benchmark is skipped without it).
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-cpu}"
if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
else
    py=python
fi
nanovlm="${NANOVLM:-}"

run() {
    echo "+ $*" >&2
    "$py" "$@"
}

case "$mode" in
cpu)
    threads=(--threads "${BENCH_THREADS:-1}")
    run -m bench.train_throughput "${threads[@]}" --profile
    run -m bench.train_throughput --config gpu200m --tiny --fusion all "${threads[@]}"
    run -m bench.generation "${threads[@]}" --repeats 5 --profile
    run -m bench.data_pipeline "${threads[@]}"
    if [[ -n "$nanovlm" ]]; then
        # torch's CPU attention rejects nanoVLM's mask + is_causal call, hence --drop-padding-mask
        run -m bench.nanovlm_peer --nanovlm "$nanovlm" --tiny --drop-padding-mask "${threads[@]}"
    else
        echo "NANOVLM is not set: skipping bench/nanovlm_peer.py" >&2
    fi
    ;;
gpu)
    run -m bench.train_throughput --config gpu200m --fusion all --profile
    run -m bench.train_throughput --config gpu200m --fusion all --compile
    run -m bench.generation --config gpu200m --profile
    run -m bench.data_pipeline --config gpu200m --workers 0 2 4 8
    if [[ -n "$nanovlm" ]]; then
        run -m bench.nanovlm_peer --nanovlm "$nanovlm" --profile
    else
        echo "NANOVLM is not set: skipping bench/nanovlm_peer.py" >&2
    fi
    ;;
*)
    echo "usage: bench/run_all.sh [cpu|gpu]" >&2
    exit 2
    ;;
esac
run -m bench.make_results
