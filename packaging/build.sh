#!/usr/bin/env bash
# Builds netmedic's packages from the source tree, all under build/ (gitignored):
#
#   packaging/build.sh tarball   build/packages/netmedic-VERSION.tar.gz (the working tree's files:
#                                tracked + untracked-not-ignored, as `git ls-files` sees them)
#   packaging/build.sh deb       the tarball, extracted to build/deb/, packaging/debian copied to debian/,
#                                dpkg-buildpackage -b; lintian -> build/packages/lintian.txt
#   packaging/build.sh rpm       rpmbuild with _topdir build/rpm/TARGET/ from the same tarball, once per
#                                target (packaging/rpm/targets/*.macros: el9), each byte-compiled by a
#                                local python of the target's version; rpmlint -> build/packages/rpmlint.txt
#
# A package is rebuilt only when the tarball's content changed since its last build (the tarball is
# reproducible: sorted, fixed owners and mtimes, gzip -n), so back-to-back `make deb` runs and test
# runs reuse it. NETMEDIC_PKG_REBUILD=1 forces a rebuild.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/build/packages
mkdir -p "$OUT"
# One build at a time (tests of other suites may build the .deb too).
exec 9>"$OUT/.lock"
flock 9
# Debian's own toolchain and python3, whatever venv or pyenv the caller has.
export PATH=/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV PYENV_VERSION PYTHONSTARTUP || true
export LC_ALL=C.UTF-8

VERSION=$(sed -n 's/^__version__ *= *"\(.*\)"/\1/p' netmedic/__init__.py)
[ -n "$VERSION" ] || { echo "build.sh: no __version__ in netmedic/__init__.py" >&2; exit 1; }
NAME=netmedic-$VERSION
# Reproducible timestamps: the last commit's time (or a fixed one outside git).
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 1700000000)}
export SOURCE_DATE_EPOCH

tarball() {
    local list tmp
    list=$(mktemp)
    tmp=$(mktemp -d)
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git ls-files -z --cached --others --exclude-standard > "$list.z"
        # drop files deleted in the working tree but still in the index
        while IFS= read -r -d '' f; do
            if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\n' "$f"; fi
        done < "$list.z" | LC_ALL=C sort > "$list"
        rm -f "$list.z"
    else
        find . \( -path ./.git -o -path ./.venv -o -path ./build -o -path ./dist -o -name __pycache__ \
                  -o -name '.*_cache' -o -name '*.egg-info' \) -prune -o \( -type f -o -type l \) -print \
            | sed 's|^\./||' | LC_ALL=C sort > "$list"
    fi
    grep -v -E '(^|/)__pycache__/|\.pyc$' "$list" > "$list.f" || true
    tar --create --no-recursion --files-from="$list.f" --sort=name --owner=0 --group=0 --numeric-owner \
        --mtime="@$SOURCE_DATE_EPOCH" --transform="s|^|$NAME/|S" --format=gnu -f "$tmp/$NAME.tar"
    gzip -n -9 "$tmp/$NAME.tar"
    if ! cmp -s "$tmp/$NAME.tar.gz" "$OUT/$NAME.tar.gz" 2>/dev/null; then
        mv "$tmp/$NAME.tar.gz" "$OUT/$NAME.tar.gz"
    fi
    rm -rf "$tmp" "$list" "$list.f"
    sha256sum "$OUT/$NAME.tar.gz" | cut -d' ' -f1
}

fresh() {  # fresh KIND SHA: is the last build of KIND from this tarball, with its artifacts present?
    [ -z "${NETMEDIC_PKG_REBUILD:-}" ] && [ -f "$OUT/.$1.sha256" ] && [ "$(cat "$OUT/.$1.sha256")" = "$2" ] \
        && [ -n "$(ls "$OUT"/*."$1" 2>/dev/null)" ]
}

build_deb() {
    local sha work src debver
    sha=$(tarball)
    if fresh deb "$sha"; then
        echo "build.sh: $(ls "$OUT"/*.deb) is up to date"
        return 0
    fi
    rm -f "$OUT"/*.deb "$OUT/.deb.sha256" "$OUT/lintian.txt"
    work=$ROOT/build/deb
    rm -rf "$work"
    mkdir -p "$work"
    tar -xzf "$OUT/$NAME.tar.gz" -C "$work"
    src=$work/$NAME
    cp -rL "$src/packaging/debian" "$src/debian"
    # The changelog names the Debian version; a newer __version__ gets an entry in the build copy only.
    debver=$(cd "$src" && dpkg-parsechangelog -S Version)
    if [ "${debver%-*}" != "$VERSION" ]; then
        { echo "netmedic ($VERSION-1) unstable; urgency=medium"; echo
          echo "  * Upstream version $VERSION."; echo
          echo " -- netmedic maintainers <maintainers@users.noreply.h-seed-7e761159.example>  $(date -R -u -d "@$SOURCE_DATE_EPOCH")"
          echo; cat "$src/debian/changelog"; } > "$src/debian/changelog.new"
        mv "$src/debian/changelog.new" "$src/debian/changelog"
    fi
    (cd "$src" && dpkg-buildpackage -b -us -uc --no-pre-clean > "$work/build.log" 2>&1) || {
        tail -40 "$work/build.log" >&2
        echo "build.sh: dpkg-buildpackage failed; full log: $work/build.log" >&2
        exit 1
    }
    cp "$work"/netmedic_*_all.deb "$OUT/"
    echo "$sha" > "$OUT/.deb.sha256"
    echo "build.sh: built $(ls "$OUT"/*.deb)"
    if command -v lintian >/dev/null; then
        # lintian exits non-zero on errors only; the tags are kept (and printed) for docs/packaging.md.
        lintian --display-info --pedantic "$OUT"/netmedic_*_all.deb > "$OUT/lintian.txt" 2>&1 || true
        echo "build.sh: lintian:"; sed 's/^/  /' "$OUT/lintian.txt"
    fi
    rm -rf "$work"
}

# A local interpreter of version $1 (X.Y), for byte-compiling and checking a target's package:
# pyenv's (${PYENV_ROOT:-$HOME/.pyenv}/versions/X.Y.*, the newest), else pythonX.Y on PATH.
find_python() {
    local c
    for c in $(ls -d "${PYENV_ROOT:-${HOME:-/root}/.pyenv}"/versions/"$1".*/bin/python"$1" 2>/dev/null | sort -rV) \
             $(command -v "python$1" 2>/dev/null); do
        if "$c" -c pass 2>/dev/null; then echo "$c"; return 0; fi
    done
    return 1
}

# One RPM per target, packaging/rpm/targets/TARGET.macros (today: el9): its dist tag in the file name,
# its python3.Y site-packages, byte-code compiled by a local python3.Y, python(abi) = 3.Y.
build_rpm() {
    local sha top macros target pyver pybc packager
    sha=$(tarball)
    if fresh rpm "$sha"; then
        echo "build.sh: $(ls "$OUT"/*.rpm | tr '\n' ' ')is up to date"
        return 0
    fi
    rm -f "$OUT"/*.rpm "$OUT/.rpm.sha256" "$OUT/rpmlint.txt"
    packager="netmedic maintainers <maintainers@users.noreply.h-seed-7e761159.example>"
    for macros in packaging/rpm/targets/*.macros; do
        target=$(basename "$macros" .macros)
        pyver=$(sed -n 's/^%python3_version  *\([0-9.]*\)$/\1/p' "$macros")
        [ -n "$pyver" ] || { echo "build.sh: $macros defines no python3_version" >&2; exit 1; }
        pybc=$(find_python "$pyver") || {
            echo "build.sh: the $target RPM needs a local python$pyver to byte-compile with (pyenv install $pyver)" >&2
            exit 1
        }
        top=$ROOT/build/rpm/$target
        rm -rf "$top"
        mkdir -p "$top"/{SOURCES,SPECS,BUILD,RPMS,SRPMS,BUILDROOT}
        cp "$OUT/$NAME.tar.gz" "$top/SOURCES/"
        sed "s/^Version: .*/Version:        $VERSION/" packaging/rpm/netmedic.spec > "$top/SPECS/netmedic.spec"
        # --nodeps: the BuildRequires name EL packages, which a Debian host's rpm database does not have.
        # __os_install_post: Debian's brp-compress uses bash's `read -d`, under /bin/sh (dash) it
        # compresses nothing; EL gzips the man pages, so run it with bash (the other brp scripts strip
        # binaries: a noarch package has none).
        rpmbuild --load "$ROOT/$macros" --define "_topdir $top" --define "python3_bytecompile $pybc" \
            --define "__os_install_post /bin/bash /usr/lib/rpm/brp-compress %{_prefix}" \
            --define "packager $packager" --define "_source_filedigest_algorithm 8" \
            --define "_binary_filedigest_algorithm 8" --nodeps -ba "$top/SPECS/netmedic.spec" \
            > "$top/build.log" 2>&1 || {
            tail -40 "$top/build.log" >&2
            echo "build.sh: rpmbuild ($target) failed; full log: $top/build.log" >&2
            exit 1
        }
        cp "$top"/RPMS/noarch/netmedic-*.rpm "$top"/SRPMS/netmedic-*.src.rpm "$OUT/"
    done
    echo "$sha" > "$OUT/.rpm.sha256"
    echo "build.sh: built $(ls "$OUT"/*.rpm | tr '\n' ' ')"
    if command -v rpmlint >/dev/null; then
        rpmlint -c packaging/rpm/rpmlint.toml "$OUT"/netmedic-*.noarch.rpm packaging/rpm/netmedic.spec > "$OUT/rpmlint.txt" 2>&1 || true
        echo "build.sh: rpmlint:"; sed 's/^/  /' "$OUT/rpmlint.txt"
    fi
    rm -rf "$ROOT/build/rpm"
}

case "${1:-}" in
    tarball) tarball >/dev/null; echo "build.sh: $OUT/$NAME.tar.gz" ;;
    deb) build_deb ;;
    rpm) build_rpm ;;
    *) echo "usage: $0 tarball|deb|rpm" >&2; exit 2 ;;
esac
