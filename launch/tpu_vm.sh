#!/usr/bin/env bash
# Train diffjax on a Cloud TPU VM slice (single host or pod slice) with gcloud.
#
#   launch/tpu_vm.sh --name=NAME --zone=ZONE --accelerator=v4-32 [--project=PROJECT]
#       [--version=RUNTIME] [--spot] [--source=copy|git:URL[@REF]] [--bucket=BUCKET]
#       [--no-setup] [--delete] [--dry-run] -- <python -m diffjax.main arguments>
#
# Steps, each skipped when not needed:
#   1. create the TPU VM, or reuse it when `describe` finds it READY with the same accelerator;
#   2. install diffjax on every worker (--worker=all): this checkout copied with scp (default,
#      uncommitted changes included) or `git clone URL` at REF; then `pip install -e .` and
#      jax[tpu] at the version pyproject.toml pins, in ~/diffjax-venv (--no-setup skips this);
#      with --bucket, also gcsfuse, to mount gs://BUCKET at /gcs/BUCKET on every worker: Grain
#      reads ArrayRecord files and diffjax writes its workdir through the file system, so data_dir
#      and workdir on GCS are given as /gcs/BUCKET/... paths;
#   3. run `python -m diffjax.main ARGS` on all workers at once, streaming every worker's log
#      (lines prefixed with its hostname) and appending it to ~/diffjax-train.log on the worker;
#   4. with --delete, delete the TPU VM at the end (alone, --delete only deletes).
# Every worker runs the same command: JAX finds the other workers through the GCE metadata
# server (DIFFJAX_DISTRIBUTED=auto), and each reads its own slice of every global batch.
# --dry-run prints every command instead of running it.
#
# Environment: GCLOUD (default gcloud).
set -euo pipefail

usage() {
  sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() { echo "tpu_vm.sh: $*" >&2; exit 2; }

name="" zone="" accelerator="" project="" version="" spot=0 source="copy" bucket="" setup=1
delete=0 dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --accelerator=*) accelerator="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --spot) spot=1 ;;
    --source=*) source="${1#*=}" ;;
    --bucket=*) bucket="${1#*=}"; bucket="${bucket#gs://}"; bucket="${bucket%%/*}" ;;
    --no-setup) setup=0 ;;
    --delete) delete=1 ;;
    --dry-run|--dry_run) dry_run=1 ;;
    -h|--help) usage ;;
    --) shift; break ;;
    *) die "unknown option '$1' (launcher options come before '--', training arguments after it)." ;;
  esac
  shift
done
train_args=("$@")

[[ -n "$name" ]] || die "--name=NAME is required (the TPU VM to create or reuse)."
[[ -n "$zone" ]] || die "--zone=ZONE is required, e.g. --zone=us-central2-b for v4."
want_vm=$(( ${#train_args[@]} > 0 || !delete ))
if (( want_vm )); then
  [[ "$accelerator" =~ ^v[0-9][a-z0-9]*-[0-9]+$ ]] ||
    die "--accelerator=TYPE is required, e.g. v4-32, v5p-64 or v5litepod-16 (got '$accelerator')."
fi
case "$source" in
  copy|git:?*) ;;
  *) die "--source must be 'copy' or 'git:URL[@REF]', got '$source'." ;;
esac

# The runtime image that ships the TPU drivers for each generation.
if [[ -z "$version" ]]; then
  case "$accelerator" in
    v5litepod-*|v5e-*) version="v2-alpha-tpuv5-lite" ;;
    v5p-*) version="v2-alpha-tpuv5" ;;
    v6e-*) version="v2-alpha-tpuv6e" ;;
    *) version="tpu-ubuntu2204-base" ;;
  esac
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
jax_version="$(sed -n 's/^ *"jax==\([^"]*\)".*/\1/p' "$repo/pyproject.toml" | head -n 1)"
[[ -n "$jax_version" ]] || die "cannot read the pinned jax version from $repo/pyproject.toml."
gcloud_bin="${GCLOUD:-gcloud}"
tpu=("$gcloud_bin" compute tpus tpu-vm)
where=("--zone=$zone")
[[ -n "$project" ]] && where+=("--project=$project")

# Shell words, single-quoted where needed: printed commands can be pasted back into a shell.
quote() {
  local words=() word
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then words+=("$word")
    else words+=("'${word//\'/\'\\\'\'}'"); fi
  done
  echo "${words[*]}"
}
run() {
  if (( dry_run )); then quote "$@"; else "$@"; fi
}
# Runs one shell command on every worker of the slice.
on_all_workers() {
  run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$1"
}

ensure_vm() {
  local create=("${tpu[@]}" create "$name" "${where[@]}" "--accelerator-type=$accelerator"
                "--version=$version")
  (( spot )) && create+=(--spot)
  local describe=("${tpu[@]}" describe "$name" "${where[@]}"
                  "--format=value(state,acceleratorType)")
  if (( dry_run )); then
    echo "$(quote "${describe[@]}")  # reuse the VM if it is READY"
    echo "$(quote "${create[@]}")  # only if describe found none"
    return
  fi
  local found
  if found="$("${describe[@]}" 2>/dev/null)" && [[ -n "$found" ]]; then
    local state type
    read -r state type <<<"$found"
    type="${type##*/}"
    [[ "$type" == "$accelerator" ]] ||
      die "TPU VM '$name' exists with accelerator $type, not $accelerator; pass" \
          "--accelerator=$type, another --name, or delete it: $0 --name=$name --zone=$zone --delete"
    [[ "$state" == "READY" ]] ||
      die "TPU VM '$name' is $state (spot VMs end PREEMPTED); delete it with" \
          "$0 --name=$name --zone=$zone --delete, then rerun to create a fresh one."
    echo "tpu_vm.sh: reusing READY TPU VM '$name' ($type)." >&2
  else
    "${create[@]}"
  fi
}

install_everywhere() {
  local fetch
  if [[ "$source" == copy ]]; then
    # The working tree as it is, without local environments and outputs.
    local archive="${TMPDIR:-/tmp}/diffjax-$name.tar.gz"
    run tar -czf "$archive" -C "$repo" --exclude=./.git --exclude=./.venv --exclude=./workdirs \
      --exclude='*/__pycache__' --exclude=./.pytest_cache .
    run "${tpu[@]}" scp "$archive" "$name:diffjax.tar.gz" "${where[@]}" --worker=all
    fetch="rm -rf ~/diffjax && mkdir -p ~/diffjax && tar -xzf ~/diffjax.tar.gz -C ~/diffjax"
  else
    local url="${source#git:}" ref=""
    if [[ "$url" == *@* && "${url##*@}" != *[:/]* ]]; then ref="${url##*@}"; url="${url%@*}"; fi
    fetch="rm -rf ~/diffjax && git clone $(quote "$url") ~/diffjax"
    [[ -n "$ref" ]] && fetch+=" && git -C ~/diffjax checkout $(quote "$ref")"
  fi
  local install
  install="set -e; $fetch; python3 -m venv ~/diffjax-venv; \
~/diffjax-venv/bin/pip install -q -U pip; \
~/diffjax-venv/bin/pip install -q -e ~/diffjax $(quote "jax[tpu]==$jax_version") && \
~/diffjax-venv/bin/python -m diffjax.evaluation.fetch_weights"
  if [[ -n "$bucket" ]]; then
    # gcsfuse from Google's apt repository (see the Cloud Storage FUSE install guide).
    install+="; if ! command -v gcsfuse >/dev/null; then \
echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] \
https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" \
| sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null; \
curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg \
| sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null; \
sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; fi"
  fi
  on_all_workers "$install"
}

# Mounts the bucket unless it is (a reused or rebooted VM may have lost the mount).
mount_bucket() {
  [[ -n "$bucket" ]] || return 0
  local dir="/gcs/$bucket"
  echo "sudo mkdir -p $dir && sudo chown \$USER $dir && \
{ mountpoint -q $dir || gcsfuse --implicit-dirs $bucket $dir; } && "
}

train_everywhere() {
  # $(hostname) is expanded on each worker, so the interleaved stream says who wrote what.
  on_all_workers "set -o pipefail; $(mount_bucket)cd ~/diffjax && DIFFJAX_DISTRIBUTED=auto \
~/diffjax-venv/bin/python -m diffjax.main $(quote "${train_args[@]}") 2>&1 \
| tee -a ~/diffjax-train.log | sed -u \"s/^/[\$(hostname)] /\""
}

delete_vm() {
  run "${tpu[@]}" delete "$name" "${where[@]}" --quiet
}

if (( ${#train_args[@]} == 0 )); then
  if (( delete )); then delete_vm; exit 0; fi
  # Setting up without training is useful before a series of runs.
  ensure_vm
  (( setup )) && install_everywhere
  exit 0
fi

status=0
ensure_vm
(( setup )) && install_everywhere
train_everywhere || status=$?
if (( delete )); then delete_vm; fi
exit "$status"
