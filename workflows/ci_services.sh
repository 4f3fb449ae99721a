#!/usr/bin/env bash
# The services the test suite talks to, installed where missing from Debian's packages:
# slurm-wlm + munge (the `slurm` tests start a single-node Slurm on 127.0.0.1 themselves, through
# workflows/local_slurm.sh) and PostgreSQL (the tracking-server tests start their own cluster
# through workflows/mlflow_server.sh). Needs root and Debian's package registry; run it once on a
# new machine, before `make test` (.ci/run does).
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "ci_services: needs root (apt-get)" >&2; exit 2; }
missing=()
for exe in munged slurmctld slurmd sbatch; do command -v "$exe" >/dev/null || missing+=(slurm-wlm munge); done
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then missing+=(postgresql); fi
id postgres >/dev/null 2>&1 || missing+=(postgresql)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
    pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
    echo "ci_services: installing $pkgs"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
fi
echo "ci_services: $(dpkg-query -W -f '${Package} ${Version}, ' slurm-wlm munge 2>/dev/null)\
postgresql $(ls -d /usr/lib/postgresql/*/ 2>/dev/null | xargs -n1 basename | sort -V | tail -n1)"
