# Common paths for chute's scripts. Sourced, not run.
# shellcheck shell=bash
CHUTE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHUTE_STATE="${CHUTE_STATE:-$CHUTE_ROOT/.chute}"
CHUTE_VENV="${CHUTE_VENV:-$CHUTE_ROOT/.venv}"
KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_HOME="${KAFKA_HOME:-$CHUTE_ROOT/.chute/opt/kafka-$KAFKA_VERSION}"
export CHUTE_ROOT CHUTE_STATE CHUTE_VENV KAFKA_VERSION KAFKA_HOME

log() { printf '\033[1m[chute]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31m[chute] error:\033[0m %s\n' "$*" >&2; exit 1; }

# apt-get as root, or through sudo when that exists.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root to run: $*"; fi
}

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  local stamp=/var/lib/apt/periodic/chute-update-stamp
  if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +720 2>/dev/null)" ]; then
    as_root apt-get update -q >/dev/null
    as_root mkdir -p "$(dirname "$stamp")" && as_root touch "$stamp"
  fi
  # policy-rc.d keeps the package's own service from starting: we run our own instance.
  as_root env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}
