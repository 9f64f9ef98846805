#!/usr/bin/env bash
# rillet and the reference peer (llama.cpp's own llama-server, ../shared/peers) measured back to back in
# one run, one server at a time, with the same load: bench/serve.py at concurrency 1 4 16 64, max_tokens 128,
# temperature 0, then bench/long_prompt.py (time to first token of a prompt of about 1,000 tokens).
# Prints one JSON line per server and measurement, tagged with "server", and each server's resident
# set (all its processes) once the model is loaded and after the load; the first line ("measure":
# "setup") names the model, the flags, the date and the CPU.
#
# The lines are also written to $RESULTS (default bench/results/side_by_side-DATE-TIME.jsonl, which
# git ignores), and bench/chart.py draws them at the end into $CHART (default: the same path, .png):
# tokens/s and TTFT p50 against concurrency, rillet beside the peer, titled with the model, rillet's
# flags and the CPU. The chart needs matplotlib (the `bench` extra, `make bench-install`); when it is
# missing the script pip-installs it into .venv, and says so. Redraw, or join several runs' medians:
# `.venv/bin/python bench/chart.py FILE.jsonl [MORE.jsonl ...] -o chart.png`.
#
#   bash bench/side_by_side.sh [ROUNDS]        (run `make install` first; the peer builds itself, ~10 min once)
#   RILLET_ARGS="--weights quantized-int8" bash bench/side_by_side.sh 3     (rillet with other flags)
#   PEER_CONCURRENCY="1" bash bench/side_by_side.sh      (the peer only where it is the drift reference)
#   MODEL=/path/to/file.gguf CONCURRENCY="1 16" bash bench/side_by_side.sh 3   (another model on both)
#   PEER=../shared/peers/llama-cpp-python.sh   (the older peer, which answers one request at a time)
#   PEER_ARGS="..."                  (more flags for the peer)
#   RESULTS=run1.jsonl CHART=run1.png bash bench/side_by_side.sh   (where the lines and chart go, from the repo root)
#   LONG_PROMPT_REPEATS=0 bash bench/side_by_side.sh                (no long prompt: the streams only)
#   CLIENT_NICE=19 bash bench/side_by_side.sh   (the load generator at a lower priority than both servers:
#                                                 on a 2-core machine it shares their cores)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-1}
PEER=${PEER:-../shared/peers/llama-server.sh}
PEER_NAME=$(basename "$PEER" .sh)
PY=.venv/bin/python
PORT_RILLET=18431
PORT_PEER=18432
NAME=bench-model
CONCURRENCY=${CONCURRENCY:-1 4 16 64}
MAX_TOKENS=${MAX_TOKENS:-128}
RESULTS=${RESULTS:-bench/results/side_by_side-$(date +%Y-%m-%d-%H%M%S).jsonl}
CHART=${CHART:-${RESULTS%.jsonl}.png}
mkdir -p "$(dirname "$RESULTS")" "$(dirname "$CHART")"
MODEL_ARGS=()
if [ -n "${MODEL:-}" ]; then MODEL_ARGS=(--model "$MODEL"); export PEER_MODEL=$MODEL; fi
export PEER_ALIAS=$NAME
MODEL_FILE=$(basename "${MODEL:-$($PY -c 'from rillet.model import default_model_path; print(default_model_path())')}")

wait_ready() {  # port
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$1/v1/models" >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "server on port $1 did not start" >&2
  return 1
}

rss_mb() {  # pid: the resident set of it and every process below it, in MB
  local total=0 p
  for p in $1 $(descendants "$1"); do
    total=$(( total + $(awk '/VmRSS/ {print $2}' /proc/$p/status 2>/dev/null || echo 0) ))
  done
  echo $(( total / 1024 ))
}

descendants() {  # pid
  local child
  for child in $(cat /proc/$1/task/*/children 2>/dev/null); do echo "$child"; descendants "$child"; done
}

measure() {  # name port concurrency...
  local name=$1 port=$2
  shift 2
  wait_ready "$port"
  echo "{\"server\": \"$name\", \"rss_mb_loaded\": $(rss_mb "$pid")}"
  nice -n "${CLIENT_NICE:-0}" $PY bench/serve.py --base-url "http://127.0.0.1:$port/v1" --model $NAME \
    --concurrency "$@" --rounds "$ROUNDS" --max-tokens $MAX_TOKENS | sed "s/^{/{\"server\": \"$name\", /"
  if [ "${LONG_PROMPT_REPEATS:-3}" -gt 0 ]; then
    $PY bench/long_prompt.py --base-url "http://127.0.0.1:$port/v1" --model $NAME \
      --repeats "${LONG_PROMPT_REPEATS:-3}" | sed "s/^{/{\"server\": \"$name\", /"
  fi
}

run() {  # every JSON line of the run, on stdout
  pid=
  trap 'if [ -n "$pid" ]; then kill $pid 2>/dev/null || true; fi' EXIT
  $PY bench/chart.py --setup model="$MODEL_FILE" rillet_args="${RILLET_ARGS:-}" peer="$PEER_NAME" \
    peer_args="${PEER_ARGS:-}" rounds="$ROUNDS" max_tokens=$MAX_TOKENS concurrency="$CONCURRENCY" \
    peer_concurrency="${PEER_CONCURRENCY:-$CONCURRENCY}"

  .venv/bin/rillet serve --port $PORT_RILLET "${MODEL_ARGS[@]}" --served-model-name $NAME ${RILLET_ARGS:-} \
    --log-level warning >/tmp/side_by_side_rillet.log 2>&1 &
  pid=$!
  measure rillet $PORT_RILLET $CONCURRENCY
  # The server and its engine process (and multiprocessing's resource tracker), together: once the
  # model is loaded (above) and after the load.
  echo "{\"server\": \"rillet\", \"rss_mb_after_load\": $(rss_mb $pid)}"
  kill $pid; wait $pid 2>/dev/null || true

  case "$PEER" in *llama-server.sh) bash "$PEER" build >/dev/null ;; *) bash "$PEER" install >/dev/null ;; esac
  bash "$PEER" start $PORT_PEER ${PEER_ARGS:-} >/tmp/side_by_side_peer.log 2>&1 &
  pid=$!
  measure "$PEER_NAME" $PORT_PEER ${PEER_CONCURRENCY:-$CONCURRENCY}
  echo "{\"server\": \"$PEER_NAME\", \"rss_mb_after_load\": $(rss_mb $pid)}"
  kill $pid; wait $pid 2>/dev/null || true
  pid=
}

run | tee "$RESULTS"
echo "results: $RESULTS" >&2

# The chart, from the lines just written; matplotlib (the bench extra) installed when missing.
if ! $PY -c 'import matplotlib' 2>/dev/null; then
  bench_extra=$($PY -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["bench"])')
  echo "matplotlib is missing: installing the bench extra into .venv for the chart (pip install $bench_extra)" >&2
  $PY -m pip install --quiet --disable-pip-version-check $bench_extra >&2
fi
$PY bench/chart.py "$RESULTS" -o "$CHART"
