#!/usr/bin/env bash
# Builds netmedic's packages from the source tree, all under build/ (gitignored):
#
#   packaging/build.sh tarball   build/packages/netmedic-VERSION.tar.gz (the working tree's files:
#                                tracked + untracked-not-ignored, as `git ls-files` sees them)
#   packaging/build.sh deb       the tarball, extracted to build/deb/, packaging/debian copied to debian/,
#                                dpkg-buildpackage -b; lintian -> build/packages/lintian.txt
#   packaging/build.sh rpm       rpmbuild with _topdir build/rpm/ from the same tarball;
#                                rpmlint -> build/packages/rpmlint.txt
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

build_rpm() {
    local sha top
    sha=$(tarball)
    if fresh rpm "$sha"; then
        echo "build.sh: $(ls "$OUT"/*.rpm) is up to date"
        return 0
    fi
    rm -f "$OUT"/*.rpm "$OUT/.rpm.sha256" "$OUT/rpmlint.txt"
    top=$ROOT/build/rpm
    rm -rf "$top"
    mkdir -p "$top"/{SOURCES,SPECS,BUILD,RPMS,SRPMS,BUILDROOT}
    cp "$OUT/$NAME.tar.gz" "$top/SOURCES/"
    sed "s/^Version: .*/Version:        $VERSION/" packaging/rpm/netmedic.spec > "$top/SPECS/netmedic.spec"
    # --nodeps: the BuildRequires name EL9 packages, which a Debian host's rpm database does not have.
    rpmbuild --define "_topdir $top" --define "_source_filedigest_algorithm 8" \
        --define "_binary_filedigest_algorithm 8" --nodeps -ba "$top/SPECS/netmedic.spec" \
        > "$top/build.log" 2>&1 || {
        tail -40 "$top/build.log" >&2
        echo "build.sh: rpmbuild failed; full log: $top/build.log" >&2
        exit 1
    }
    cp "$top"/RPMS/noarch/netmedic-*.rpm "$top"/SRPMS/netmedic-*.src.rpm "$OUT/"
    echo "$sha" > "$OUT/.rpm.sha256"
    echo "build.sh: built $(ls "$OUT"/*.rpm | tr '\n' ' ')"
    if command -v rpmlint >/dev/null; then
        rpmlint "$OUT"/netmedic-*.noarch.rpm "$top/SPECS/netmedic.spec" > "$OUT/rpmlint.txt" 2>&1 || true
        echo "build.sh: rpmlint:"; sed 's/^/  /' "$OUT/rpmlint.txt"
    fi
    rm -rf "$top"
}

case "${1:-}" in
    tarball) tarball >/dev/null; echo "build.sh: $OUT/$NAME.tar.gz" ;;
    deb) build_deb ;;
    rpm) build_rpm ;;
    *) echo "usage: $0 tarball|deb|rpm" >&2; exit 2 ;;
esac
