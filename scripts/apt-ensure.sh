# Sourced by the scripts that install test dependencies: apt_ensure LABEL PACKAGE...
# Installs the packages that are missing (no recommends), with a policy-rc.d that forbids every
# maintainer script to start a daemon on this shared machine (removed again if it was ours).
apt_ensure() {
    local label=$1; shift
    local missing="" p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    [ -n "$missing" ] || return 0
    echo "$label: apt-get install$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    local prc=/usr/sbin/policy-rc.d own_prc="" rc=0
    if [ ! -e "$prc" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$prc"
        chmod 755 "$prc"
        own_prc=1
    fi
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 $missing >/dev/null || rc=$?
    if [ -n "$own_prc" ]; then rm -f "$prc"; fi
    return "$rc"
}
