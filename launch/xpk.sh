#!/usr/bin/env bash
# Train diffjax on TPU slices of a GKE cluster with XPK (one or several slices).
#
#   launch/xpk.sh --cluster=CLUSTER --workload=NAME --tpu-type=v5p-64 [--num-slices=N]
#       [--project=PROJECT] [--zone=ZONE] [--docker-image=IMAGE] [--priority=medium]
#       [--max-restarts=N] [--dry-run] -- <python -m diffjax.main arguments>
#
# The image: by default XPK builds this checkout into python:3.11 (at /app) and every pod
# installs diffjax with jax[tpu] before training. A registry image (gcr.io/..., *docker.pkg.dev/...)
# is used as it is and must already contain diffjax.
# Several slices: the mesh sizes data/fsdp/tensor describe one slice, and the slices are joined
# over DCN; unless the arguments set --config.mesh.dcn_*, the launcher adds
# --config.mesh.dcn_data=N (data parallelism across slices: one gradient all-reduce per step is
# the only traffic on the slow links). Given dcn_* sizes must multiply to N.
# Every pod runs the same command; JAX finds its peers from the GKE environment
# (DIFFJAX_DISTRIBUTED=auto). --dry-run prints the xpk command instead of running it.
#
# Environment: XPK (default xpk).
set -euo pipefail

usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() { echo "xpk.sh: $*" >&2; exit 2; }

cluster="" workload="" tpu_type="" num_slices=1 project="" zone="" image="python:3.11"
priority="" max_restarts="" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cluster=*) cluster="${1#*=}" ;;
    --workload=*) workload="${1#*=}" ;;
    --tpu-type=*|--tpu_type=*) tpu_type="${1#*=}" ;;
    --num-slices=*|--num_slices=*) num_slices="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --docker-image=*|--docker_image=*) image="${1#*=}" ;;
    --priority=*) priority="${1#*=}" ;;
    --max-restarts=*|--max_restarts=*) max_restarts="${1#*=}" ;;
    --dry-run|--dry_run) dry_run=1 ;;
    -h|--help) usage ;;
    --) shift; break ;;
    *) die "unknown option '$1' (launcher options come before '--', training arguments after it)." ;;
  esac
  shift
done
train_args=("$@")

[[ -n "$cluster" ]] || die "--cluster=CLUSTER is required (an XPK cluster: xpk cluster list)."
[[ "$workload" =~ ^[a-z][a-z0-9-]{0,39}$ ]] ||
  die "--workload=NAME is required: lowercase letters, digits and '-', at most 40 characters" \
      "(got '$workload')."
[[ "$tpu_type" =~ ^v[0-9][a-z0-9]*-[0-9]+$ ]] ||
  die "--tpu-type=TYPE is required, e.g. v5p-64, v5litepod-256 or v4-32 (got '$tpu_type')."
[[ "$num_slices" =~ ^[1-9][0-9]*$ ]] || die "--num-slices must be a positive integer, got '$num_slices'."
(( ${#train_args[@]} > 0 )) ||
  die "no training arguments; pass them after '--', e.g. -- --config=configs/cifar10_dit.py" \
      "--workdir=gs://BUCKET/runs/dit"

# DCN sizes: add data parallelism across slices, or check the ones given.
dcn_product=1 dcn_given=0
for arg in "${train_args[@]}"; do
  if [[ "$arg" =~ ^--config\.mesh\.dcn_(data|fsdp|tensor)=([0-9-]+)$ ]]; then
    dcn_given=1
    dcn_product=$(( dcn_product * BASH_REMATCH[2] ))
  fi
done
if (( dcn_given )); then
  (( dcn_product == num_slices )) ||
    die "the --config.mesh.dcn_* sizes multiply to $dcn_product but --num-slices=$num_slices;" \
        "make them agree (or leave dcn_* out to get dcn_data=$num_slices)."
elif (( num_slices > 1 )); then
  train_args+=("--config.mesh.dcn_data=$num_slices")
fi

# Shell words, single-quoted where needed: printed commands can be pasted back into a shell.
quote() {
  local words=() word
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then words+=("$word")
    else words+=("'${word//\'/\'\\\'\'}'"); fi
  done
  echo "${words[*]}"
}

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
jax_version="$(sed -n 's/^ *"jax==\([^"]*\)".*/\1/p' "$repo/pyproject.toml" | head -n 1)"
[[ -n "$jax_version" ]] || die "cannot read the pinned jax version from $repo/pyproject.toml."

command="DIFFJAX_DISTRIBUTED=auto python -m diffjax.main $(quote "${train_args[@]}")"
xpk_args=(workload create "--cluster=$cluster" "--workload=$workload" "--tpu-type=$tpu_type"
          "--num-slices=$num_slices" "--docker-image=$image")
if [[ "$image" =~ ^(gcr\.io|([a-z0-9-]+-)?docker\.pkg\.dev)/ ]]; then
  : # A registry image runs as built: it must contain diffjax already.
else
  # XPK copies --script-dir into the image at /app, the pods' working directory.
  xpk_args+=("--script-dir=$repo")
  command="pip install -q -e . $(quote "jax[tpu]==$jax_version") && python -m diffjax.evaluation.fetch_weights && $command"
fi
[[ -n "$project" ]] && xpk_args+=("--project=$project")
[[ -n "$zone" ]] && xpk_args+=("--zone=$zone")
[[ -n "$priority" ]] && xpk_args+=("--priority=$priority")
[[ -n "$max_restarts" ]] && xpk_args+=("--max-restarts=$max_restarts")
xpk_args+=("--command=$command")

xpk_bin="${XPK:-xpk}"
if (( dry_run )); then
  quote "$xpk_bin" "${xpk_args[@]}"
  exit 0
fi
exec "$xpk_bin" "${xpk_args[@]}"
