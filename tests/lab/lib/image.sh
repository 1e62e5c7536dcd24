# shellcheck shell=bash
# The controller's container image, built from the unchanged Containerfile
# with buildah and no registry: each FROM resolves to a local base image made
# here (debootstrap), so the same file builds unchanged where a registry
# exists. Sourced by tests/lab/lab.
#
# Storage: buildah's own store under $LAB_CACHE (bases and the built image
# survive `lab down`), overlay driver (works on this root fs; vfs copies every
# layer in full).

IMAGE_NAME=localhost/rbd-mirror-step:lab
PAUSE_IMAGE=registry.k8s.io/pause:3.10
RUST_BASE=docker.io/library/rust:1.95-bookworm
DEBIAN_BASE=docker.io/library/debian:forky-slim

bah() {
  buildah --root "$LAB_CACHE/buildah/storage" --runroot "$LAB_CACHE/buildah/run" --storage-driver overlay "$@"
}

bah_has() { bah inspect --type image "$1" >/dev/null 2>&1; }

# bah_from_dir <dir> <name> <config args...>: an image whose only layer is <dir>.
bah_from_dir() {
  local dir=$1 name=$2 ctr mnt; shift 2
  ctr=$(bah from scratch)
  mnt=$(bah mount "$ctr")
  cp -a "$dir/." "$mnt/"
  bah umount "$ctr" >/dev/null
  bah config "$@" "$ctr"
  bah commit --quiet --rm "$ctr" "$name" >/dev/null
}

# debootstrap_base <suite> <script> <dir> [--include=...]: a minbase root, cached.
debootstrap_base() {
  local suite=$1 script=$2 dir=$3; shift 3
  [[ -x $dir/bin/sh ]] && return 0
  rm -rf "$dir.partial"
  debootstrap --variant=minbase "$@" "$suite" "$dir.partial" http://deb.debian.org/debian \
    "/usr/share/debootstrap/scripts/$script" >"$dir.log" 2>&1 ||
    { tail -5 "$dir.log" >&2; die "debootstrap of $suite failed (log: $dir.log)"; }
  rm -rf "$dir.partial"/var/cache/apt/archives/*.deb "$dir.partial"/var/lib/apt/lists/*
  mv "$dir.partial" "$dir"
}

# debian:forky-slim: Debian forky, minbase, as the official slim image is.
# bookworm's debootstrap has no forky script: sid's fits it.
image_base_debian() {
  bah_has "$DEBIAN_BASE" && return 0
  log "making $DEBIAN_BASE locally (debootstrap minbase forky)"
  local dir=$LAB_CACHE/base-debian-forky
  debootstrap_base forky sid "$dir"
  # The package mirror this machine reaches is a snapshot: testing's Release
  # file is signed valid for a week only, and apt refuses it once that has
  # passed ("Release file ... is expired"). The registry's image is rebuilt
  # often enough not to need this; the lab's local one is not.
  echo 'Acquire::Check-Valid-Until "false";' >"$dir/etc/apt/apt.conf.d/99lab-snapshot-mirror"
  bah_from_dir "$dir" "$DEBIAN_BASE" --cmd bash \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label "org.opencontainers.image.created=$(date -u +%FT%TZ)" \
    --label "lab.rbd-mirror-step/made-by=debootstrap minbase forky"
}

# rust:1.95-bookworm: Debian bookworm with a C toolchain (the linker rustc
# uses) and the host's Rust 1.95 toolchain where the official image keeps it
# (/usr/local/cargo, /usr/local/rustup), with the official image's PATH and
# CARGO_HOME. rustup itself cannot be fetched here (no static.rust-lang.org).
image_base_rust() {
  bah_has "$RUST_BASE" && return 0
  local tc
  tc=$(rustc --print sysroot)
  [[ $("$tc/bin/rustc" --version) == "rustc 1.95."* ]] ||
    die "$RUST_BASE needs a Rust 1.95 toolchain on this machine (found: $("$tc/bin/rustc" --version))"
  log "making $RUST_BASE locally (debootstrap minbase bookworm + gcc + the host's $("$tc/bin/rustc" --version | cut -d' ' -f1-2))"
  local dir=$LAB_CACHE/base-rust-bookworm
  debootstrap_base bookworm bookworm "$dir.debian" --include=gcc,libc6-dev,ca-certificates
  rm -rf "$dir" && cp -a "$dir.debian" "$dir"
  mkdir -p "$dir/usr/local/rustup/toolchain" "$dir/usr/local/cargo/bin"
  # Without the documentation (share/doc: ~600 MB): the build does not read it.
  tar -C "$tc" --exclude=./share/doc -cf - . | tar -C "$dir/usr/local/rustup/toolchain" -xf -
  local b
  for b in cargo rustc rustdoc; do ln -s "../../rustup/toolchain/bin/$b" "$dir/usr/local/cargo/bin/$b"; done
  bah_from_dir "$dir" "$RUST_BASE" --cmd bash \
    --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label "org.opencontainers.image.created=$(date -u +%FT%TZ)" \
    --label "lab.rbd-mirror-step/made-by=debootstrap minbase bookworm + host Rust toolchain"
  rm -rf "$dir"
}

# pause: the sandbox image kubelet asks containerd for, from the k8s.io/kubernetes
# module's own pause.c (built by build.sh node), so that nothing is pulled.
image_pause() {
  bah_has "$PAUSE_IMAGE" && return 0
  local dir=$LAB_CACHE/buildah/pause-root
  rm -rf "$dir" && mkdir -p "$dir"
  cp "$LAB_CACHE/pause-$KUBERNETES_VERSION/bin/pause" "$dir/pause"
  bah_from_dir "$dir" "$PAUSE_IMAGE" --entrypoint '["/pause"]' --user 65535:65535
  rm -rf "$dir"
}

# The build's inputs: the context .dockerignore lets through (Cargo's files,
# src/, benches/), the Containerfile, and the bases. The image is rebuilt
# when any changes, and only then.
image_key() {
  {
    (cd "$REPO" && git ls-files -co --exclude-standard -z -- Cargo.toml Cargo.lock src benches Containerfile .dockerignore |
      sort -z | xargs -0 sha256sum)
    bah images --noheading --no-trunc --format '{{.ID}}' "$RUST_BASE"
    bah images --noheading --no-trunc --format '{{.ID}}' "$DEBIAN_BASE"
  } | sha256sum | cut -c1-16
}

cmd_image() {
  local t0=$SECONDS key tag
  image_pause
  image_base_debian
  image_base_rust
  key=$(image_key) tag=localhost/rbd-mirror-step:lab-$key
  if ! bah_has "$tag"; then
    log "building $IMAGE_NAME from the Containerfile (release build inside the image: several minutes cold)"
    # --network host: the RUN steps reach Debian's archive and crates.io as the host does.
    # The host's cargo registry cache is mounted so that crates are not downloaded again;
    # nothing of it ends in an image (a RUN volume is not part of the layer).
    # --layers: a rebuild reuses the Rust stage when only the final stage changed.
    bah bud --quiet --pull=never --network host --layers \
      --volume "$HOME/.cargo/registry:/usr/local/cargo/registry" \
      -f "$REPO/Containerfile" -t "$tag" "$REPO" >"$LOGS/image-build.log" 2>&1 ||
      { tail -20 "$LOGS/image-build.log" >&2; bah rm --all >/dev/null 2>&1 || true
        die "the image build failed (log: $LOGS/image-build.log)"; }
    log "image built in $((SECONDS - t0))s"
    # Earlier builds and their intermediate stages: only the newest is kept.
    local old
    for old in $(bah images --noheading --format '{{.Name}}:{{.Tag}}' localhost/rbd-mirror-step); do
      [[ $old == "$tag" ]] || bah rmi "$old" >/dev/null 2>&1 || true
    done
    bah rmi --prune >/dev/null 2>&1 || true
  fi
  bah tag "$tag" "$IMAGE_NAME"
  image_report "$tag" | tee "$LAB_DIR/image-report"
  if node_running; then node_import_images; fi
}

# Size and contents: what a user's node pulls and runs.
image_report() {
  local tag=$1 ctr mnt
  ctr=$(bah from --pull=never "$tag")
  mnt=$(bah mount "$ctr")
  echo "image: $IMAGE_NAME ($tag)"
  echo "size: $(bah images --format '{{.Size}}' "$tag" | head -1)"
  echo "binary: $(du -h "$mnt/usr/local/bin/rbd-mirror-step" | cut -f1) /usr/local/bin/rbd-mirror-step"
  echo "rbd: $(bah run "$ctr" -- rbd --version 2>/dev/null)"
  echo "user: $(bah inspect --format '{{.OCIv1.Config.User}}' "$tag")"
  echo "packages: $(chroot "$mnt" dpkg-query -W -f '.\n' 2>/dev/null | wc -l) (dpkg)"
  bah umount "$ctr" >/dev/null
  bah rm "$ctr" >/dev/null
}
