#!/usr/bin/env bash
# Makes the two base images deploy/Dockerfile needs from this machine's own .NET install, for a Docker engine that
# cannot pull (no registry reachable):
#   distgpt-local/sdk:10.0     the whole /usr/share/dotnet (SDK), a shell and coreutils, ICU, OpenSSL, CA certificates
#   distgpt-local/aspnet:10.0  the same without the SDK and ICU (distgpt runs with invariant globalization)
# Each is a `docker import` of a tar of host files: /usr/share/dotnet plus every library `ldd` names for the dotnet
# host, the runtime's native libraries, the shell and the tools; no package manager, no registry. Then:
#   docker build -f deploy/Dockerfile --build-arg SDK_IMAGE=distgpt-local/sdk:10.0 \
#     --build-arg RUNTIME_IMAGE=distgpt-local/aspnet:10.0 -t distgpt:latest .
# Usage: deploy/local-bases.sh [--force]   (an existing base is kept unless --force)
set -euo pipefail
sdk_tag=distgpt-local/sdk:10.0 runtime_tag=distgpt-local/aspnet:10.0
dotnet_root=$(dirname "$(readlink -f "$(command -v dotnet)")")
force=false
[ "${1:-}" = --force ] && force=true
fail() { echo "local-bases: $*" >&2; exit 1; }
[ -x "$dotnet_root/dotnet" ] || fail "no .NET install found (dotnet not on PATH)"
ls "$dotnet_root"/shared/Microsoft.AspNetCore.App/ >/dev/null 2>&1 || fail "$dotnet_root has no ASP.NET Core shared framework"
docker info >/dev/null 2>&1 || fail "no Docker engine answers (docker info failed)"

# Tools the Dockerfile's RUN lines and the k8s wrapper script use.
tools="sh dash ln mkdir chown chmod cat ls rm mv cp touch sleep env id test [ echo true false tail head"

# The root file system's skeleton: merged /usr as on Debian 12, a user `app` (uid 1654, as in the official .NET images).
make_skeleton() {
  local root=$1
  mkdir -p "$root"/{usr/bin,usr/sbin,usr/local/bin,usr/lib/x86_64-linux-gnu,usr/lib64,etc/ssl/certs,tmp,root,home/app,var/tmp}
  ln -s usr/bin "$root/bin"; ln -s usr/sbin "$root/sbin"; ln -s usr/lib "$root/lib"; ln -s usr/lib64 "$root/lib64"
  chmod 1777 "$root/tmp" "$root/var/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1654:1654:app:/home/app:/usr/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\napp:x:1654:\n' >"$root/etc/group"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/" 2>/dev/null || true
  chown 1654:1654 "$root/home/app"
  for t in $tools; do
    local p; p=$(command -v "$t" 2>/dev/null || true)
    case "$p" in /*) cp -L "$p" "$root/usr/bin/$t" ;; esac
  done
  ln -sf /usr/share/dotnet/dotnet "$root/usr/bin/dotnet"
}

# Every shared library the given ELF files load (ldd), copied under /usr/lib/x86_64-linux-gnu, the loader under /usr/lib64.
copy_libraries() {
  local root=$1; shift
  ldd "$@" 2>/dev/null | awk '/=> \//{print $3} /^\t\/lib64/{print $1}' | sort -u | while read -r lib; do
    case "$lib" in
      */ld-linux-x86-64.so.2) cp -L "$lib" "$root/usr/lib64/" ;;
      *) cp -L "$lib" "$root/usr/lib/x86_64-linux-gnu/" ;;
    esac
  done
}

# dlopen'ed at run time, so ldd does not name them: OpenSSL (TLS), zlib, Kerberos (Negotiate auth); ICU for the SDK.
extra_libraries() {
  local root=$1 with_icu=$2 pattern='libssl.so.3|libcrypto.so.3|libz.so.1|libgssapi_krb5.so.2|libkrb5.so.3|libk5crypto.so.3|libcom_err.so.2|libkrb5support.so.0|libkeyutils.so.1|libresolv.so.2'
  $with_icu && pattern="$pattern|libicu(uc|i18n|data).so.[0-9]+"
  local found=()
  for lib in /usr/lib/x86_64-linux-gnu/*.so.*; do
    [[ $(basename "$lib") =~ ^($pattern)$ ]] && found+=("$lib")
  done
  [ ${#found[@]} -gt 0 ] || return 0
  cp -L "${found[@]}" "$root/usr/lib/x86_64-linux-gnu/"
  copy_libraries "$root" "${found[@]}"
  if [ -d /usr/lib/ssl ]; then mkdir -p "$root/usr/lib/ssl"; cp -L /usr/lib/ssl/openssl.cnf "$root/usr/lib/ssl/" 2>/dev/null || true; fi
}

# make_base TAG WITH_SDK: a tar of the skeleton and /usr/share/dotnet (all of it, or without the SDK parts), imported.
make_base() {
  local tag=$1 with_sdk=$2
  if ! $force && docker image inspect "$tag" >/dev/null 2>&1; then echo "local-bases: $tag exists (--force to remake it)"; return; fi
  local root; root=$(mktemp -d /tmp/distgpt-base.XXXXXX)
  trap 'rm -rf "$root"' RETURN
  make_skeleton "$root"
  local elves=("$dotnet_root/dotnet" "$dotnet_root"/shared/*/*/*.so "$dotnet_root"/host/fxr/*/*.so)
  for t in $tools; do [ -f "$root/usr/bin/$t" ] && elves+=("$root/usr/bin/$t"); done
  copy_libraries "$root" "${elves[@]}"
  extra_libraries "$root" "$with_sdk"
  local parts=(dotnet host shared)
  if $with_sdk; then parts=($(cd "$dotnet_root" && ls -A)); fi
  local env=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
             --change 'ENV DOTNET_ROOT=/usr/share/dotnet' --change 'ENV DOTNET_RUNNING_IN_CONTAINER=true'
             --change 'ENV APP_UID=1654' --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt')
  if $with_sdk; then
    env+=(--change 'ENV HOME=/root' --change 'ENV DOTNET_CLI_TELEMETRY_OPTOUT=1' --change 'ENV DOTNET_NOLOGO=1')
    # Where NuGet here cannot reach certificate revocation servers, restores inside a build must not try either.
    [ -n "${NUGET_CERT_REVOCATION_MODE:-}" ] && env+=(--change "ENV NUGET_CERT_REVOCATION_MODE=$NUGET_CERT_REVOCATION_MODE")
  else
    env+=(--change 'ENV DOTNET_SYSTEM_GLOBALIZATION_INVARIANT=true')
  fi
  local start=$SECONDS
  local rel=${dotnet_root#/}
  tar -c --numeric-owner -C "$root" . -C / --transform "s,^$rel,usr/share/dotnet," "${parts[@]/#/$rel/}" \
    | docker import "${env[@]}" - "$tag" >/dev/null
  echo "local-bases: $tag made in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
}

make_base "$runtime_tag" false
make_base "$sdk_tag" true
