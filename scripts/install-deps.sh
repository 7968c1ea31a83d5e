#!/usr/bin/env bash
# Installs the Debian packages dsacp needs to build and test, when any is missing.
# As root it runs apt-get itself; otherwise it stops and prints the one command to run.
set -euo pipefail
# libmicrohttpd-dev: dsacp serve's HTTP; libcurl4-openssl-dev: dsacp run --url (the benchmark client);
# curl: the server tests' error cases.
# clang + libclang-rt-dev (libFuzzer) build the fuzz targets that the test suite smoke-runs.
pkgs=(build-essential cmake pkg-config libjansson-dev libpcre2-dev libmicrohttpd-dev libcurl4-openssl-dev curl libopenmpi-dev openmpi-bin libopenblas-dev
      clang libclang-rt-dev)
missing=()
for p in "${pkgs[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -eq 0 ]]; then
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
else
  echo "install-deps: missing Debian packages: ${missing[*]}" >&2
  echo "run: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
