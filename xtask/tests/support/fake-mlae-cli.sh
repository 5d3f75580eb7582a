#!/bin/bash
# TEST DOUBLE for mlae-cli's process protocol, not a trainer. tests/sweep.rs runs it in place of
# `mlae-cli finetune` where only the sweep's side of the protocol is tested (forwarding Ctrl-C,
# a crashed run, a changed config, GPU slots). It reads the generated config, creates the run
# directory the way mlae-cli does (config.toml, status.json, metrics.jsonl,
# checkpoints/last.safetensors, summary.json), "trains" one short sleep per epoch, checkpoints
# every epoch, and on SIGINT/SIGTERM records `interrupted` and exits 130 like mlae-cli.
# Accuracies are made up. Everything the sweep claims about real runs is tested with the real
# mlae-cli in tests/sweep_e2e.rs and tests/slurm.rs.
#
# Knobs (environment):
#   FAKE_LOG            append one line per event: start/end/interrupted/failed
#   FAKE_EPOCH_SECONDS  sleep per epoch (default 0.05)
#   FAKE_BLOCK          runs whose name matches this regex wait after epoch 1 until FAKE_UNBLOCK exists
#   FAKE_UNBLOCK        file that releases blocked runs
#   FAKE_FAIL           runs whose name matches this regex crash (exit 1) after epoch 1
#   FAKE_ACC_FILE       lines `task seed accuracy` fixing test_acc (else derived from the config)
set -u
emit() { if [ -n "${FAKE_LOG:-}" ]; then echo "$(date +%s.%N) $*" >> "$FAKE_LOG"; fi; }
# Value of `key` in table `[section]` of a TOML file written by the toml crate (quotes stripped).
toml_get() {
  awk -v sec="[$2]" -v key="$3" '
    /^\[/ { cur = $0; next }
    cur == sec && $1 == key && $2 == "=" { v = $0; sub(/^[^=]*= */, "", v); gsub(/^"|"$/, "", v); print v; exit }
  ' "$1"
}
atomic() { printf '%s\n' "$2" > "$1.tmp" && mv "$1.tmp" "$1"; }

[ "${1:-}" = finetune ] || { echo "fake mlae-cli: only finetune" >&2; exit 2; }
shift
config=""; resume=""; force=0
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config=$2; shift 2 ;;
    --resume) resume=$2; shift 2 ;;
    --force) force=1; shift ;;
    *) echo "fake mlae-cli: unexpected argument $1" >&2; exit 2 ;;
  esac
done
if [ -n "$resume" ]; then
  dir=$resume
  [ -f "$dir/checkpoints/last.safetensors" ] || { echo "fake: nothing to resume in $dir" >&2; exit 1; }
  epoch=$(cat "$dir/checkpoints/last.safetensors")
  action=resume
else
  dir="$(toml_get "$config" output dir)/$(toml_get "$config" output name)"
  if [ -e "$dir" ] && [ "$(ls -A "$dir")" ]; then
    [ "$force" = 1 ] || { echo "fake: $dir exists; pass --force" >&2; exit 1; }
    rm -rf "$dir"
  fi
  mkdir -p "$dir/checkpoints"
  cp "$config" "$dir/config.toml"
  epoch=0
  action=fresh
fi
cfg="$dir/config.toml"
name=$(basename "$dir")
task=$(toml_get "$cfg" data task)
seed=$(toml_get "$cfg" train seed)
protocol=$(toml_get "$cfg" data protocol)
dropout=$(toml_get "$cfg" adapter dropout)
init=$(toml_get "$cfg" adapter coeff_init)
epochs=$(toml_get "$cfg" train epochs); epochs=${epochs:-3}
emit "start $name $action $epoch ${CUDA_VISIBLE_DEVICES:-none} $$"
echo "run directory: $dir"

stop=0
trap 'stop=1' INT TERM
status() { atomic "$dir/status.json" "{\"state\":\"$1\",\"step\":$epoch,\"epoch\":$epoch}"; }
status running
start_time=$(date +%s.%N)
while [ "$epoch" -lt "$epochs" ]; do
  sleep "${FAKE_EPOCH_SECONDS:-0.05}"
  if [ "$stop" = 1 ]; then status interrupted; emit "interrupted $name $epoch"; exit 130; fi
  epoch=$((epoch + 1))
  echo "{\"epoch\":$epoch,\"train_loss\":1.0}" >> "$dir/metrics.jsonl"
  atomic "$dir/checkpoints/last.safetensors" "$epoch"
  status running
  if [ -n "${FAKE_FAIL:-}" ] && [[ $name =~ $FAKE_FAIL ]]; then
    status failed; emit "failed $name $epoch"; echo "fake: crash as asked" >&2; exit 1
  fi
  if [ -n "${FAKE_BLOCK:-}" ] && [[ $name =~ $FAKE_BLOCK ]]; then
    while [ ! -e "${FAKE_UNBLOCK:-/nonexistent}" ]; do
      sleep 0.05
      if [ "$stop" = 1 ]; then status interrupted; emit "interrupted $name $epoch"; exit 130; fi
    done
  fi
done

# Accuracies: from FAKE_ACC_FILE, else a stable function of the config (distinct per setting).
h=$((16#$(printf '%s' "$task $dropout $init $seed $epochs" | md5sum | cut -c1-8)))
val=$(awk -v h="$h" 'BEGIN { printf "%.4f", 0.5 + (h % 4000) / 10000 }')
test_acc=$(awk -v h="$h" 'BEGIN { printf "%.4f", 0.45 + (h % 3989) / 10000 }')
if [ -n "${FAKE_ACC_FILE:-}" ]; then
  fixed=$(awk -v t="$task" -v s="$seed" '$1 == t && $2 == s { print $3 }' "$FAKE_ACC_FILE")
  [ -n "$fixed" ] && test_acc=$fixed
fi
if [ "$protocol" = val ]; then best_val=$val; selected=$epochs; else best_val=null; selected=null; fi
wall=$(awk -v a="$start_time" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }')
atomic "$dir/summary.json" "{\"task\":\"$task\",\"benchmark\":\"fake\",\"method\":\"mlae\",\"protocol\":\"$protocol\",\
\"test_acc\":$test_acc,\"test_acc_final\":$test_acc,\"best_test_acc\":$test_acc,\"best_val_acc\":$best_val,\
\"best_test_epoch\":$epochs,\"selected_epoch\":$selected,\"epochs\":$epochs,\"steps\":$epochs,\
\"trainable_params\":301000,\"adapter_params\":295008,\"head_params\":5992,\"total_params\":86000000,\
\"wall_seconds\":$wall,\"train_images_per_s\":1.0,\"peak_mem_mb\":1.0,\"device\":\"cpu\",\"precision\":\"fp32\",\
\"seed\":$seed,\"config_hash\":\"fake\",\"versions\":{},\"notes\":[]}"
status finished
emit "end $name $epoch"
echo "test accuracy: $test_acc"
