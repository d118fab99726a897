#!/usr/bin/env bash
# Builds the pinned development tools (Vault, SPIRE, etcd, buf and the
# protoc plugins) once, caches them outside the repository and links them into bin/.
# PostgreSQL and Chromium are Debian's packages instead (targets postgres,
# chromium):
# installed with apt-get when missing and run as root, then linked likewise.
#
# Cache: $ATF_TOOLS_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/atf-tools.
# Each build is keyed by a hash of its pinning files, so changing a pin
# rebuilds and an unchanged pin is a no-op.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
cache=${ATF_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/atf-tools}
bin="$repo/bin"
mkdir -p "$cache" "$bin"

say() { printf '==> %s\n' "$*" >&2; }

key() { (cd "$here/$1" && cat $(ls | sort)) | sha256sum | cut -c1-16; }

# build NAME: builds deploy/dev/tools/NAME into $cache/NAME-<key>/ unless it
# is already there, then links every binary into bin/.
build() {
	local name=$1 dir
	dir="$cache/$name-$(key "$name")"
	if [ ! -f "$dir/.done" ]; then
		say "building $name (first time only; this takes a few minutes)"
		local start=$SECONDS
		rm -rf "$dir" && mkdir -p "$dir/bin"
		"build_$name" "$dir"
		touch "$dir/.done"
		say "built $name in $((SECONDS - start))s"
	else
		say "$name: cached in $dir"
	fi
	for f in "$dir"/bin/* "$dir"/include; do
		if [ -e "$f" ]; then ln -sfn "$f" "$bin/$(basename "$f")"; fi
	done
}

build_vault() {
	local dir=$1 sdk
	cp -r "$here/vault" "$dir/src"
	sdk=$(cd "$dir/src" && go mod download -json github.com/hashicorp/vault/sdk@v0.9.2 | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
	# The published sdk v0.9.2 panics at server start on a check the 1.14
	# release's in-tree sdk does not have; build against a copy without it.
	cp -r "$sdk" "$dir/sdk" && chmod -R u+w "$dir/sdk"
	(cd "$dir/sdk" && git apply -p1 "$here/vault/sdk-existence-check.patch")
	(cd "$dir/src" && go mod edit -replace github.com/hashicorp/vault/sdk=../sdk &&
		go build -trimpath -o "$dir/bin/vault" .)
	rm -rf "$dir/src" "$dir/sdk"
}

build_spire() {
	local dir=$1
	(cd "$here/spire" && GOBIN="$dir/bin" go install -trimpath \
		github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent)
}

build_etcd() {
	local dir=$1
	(cd "$here/etcd" && go build -trimpath -o "$dir/bin/etcd" .)
}

build_proto() {
	local dir=$1 pv
	(cd "$here/proto" && GOBIN="$dir/bin" go install -trimpath \
		github.com/bufbuild/buf/cmd/buf \
		google.golang.org/protobuf/cmd/protoc-gen-go \
		google.golang.org/grpc/cmd/protoc-gen-go-grpc)
	# protovalidate's .proto sources, for imports of buf/validate/validate.proto
	# (no Buf Schema Registry access needed).
	pv=$(cd "$here/proto" && go mod download -json "github.com/bufbuild/protovalidate@$(cat protovalidate.version)" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
	mkdir -p "$dir/include"
	cp -r "$pv/proto/protovalidate/buf" "$dir/include/" && chmod -R u+w "$dir/include"
}

# pg_bindir prints the bin directory of the newest PostgreSQL installed by
# Debian's packages (which keep initdb and postgres off PATH), or nothing.
pg_bindir() {
	local d
	d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
	if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/postgres" ]; then echo "$d"; fi
}

# apt_install WHAT ELSEWHERE PACKAGE...: installs Debian's PACKAGEs (for
# WHAT, missing here) when run as root on Debian; otherwise says how
# (ELSEWHERE: what to install on a system without apt-get) and fails.
apt_install() {
	local what=$1 elsewhere=$2
	shift 2
	if [ "$(id -u)" != 0 ]; then
		say "$what is not installed: run 'make dev-tools' as root, or 'sudo apt-get install $1', then again"
		return 1
	fi
	command -v apt-get >/dev/null || { say "$what is not installed and this is no Debian system: $elsewhere"; return 1; }
	say "installing Debian's $1 package"
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# postgres: the tests and the demo run a PostgreSQL server of Debian's
# postgresql package (not a build of ours); install it when missing, if
# allowed to, and link its programs into bin/.
install_postgres() {
	local d
	d=$(pg_bindir)
	if [ -z "$d" ]; then
		apt_install PostgreSQL "install PostgreSQL's initdb and postgres under /usr/lib/postgresql/<version>/bin" postgresql || return 1
		d=$(pg_bindir)
		[ -n "$d" ] || { say "postgresql installed but initdb and postgres not found under /usr/lib/postgresql"; return 1; }
	else
		say "postgres: installed in $d"
	fi
	for f in initdb postgres; do ln -sfn "$d/$f" "$bin/$f"; done
}

# chromium: the console's browser tests drive Debian's chromium package
# (headless, through chromedp); install it when missing, if allowed to,
# and link it into bin/.
install_chromium() {
	local c=/usr/bin/chromium
	if [ ! -x "$c" ]; then
		apt_install Chromium "install chromium as /usr/bin/chromium" chromium fonts-dejavu-core || return 1
		[ -x "$c" ] || { say "chromium installed but /usr/bin/chromium not found"; return 1; }
	else
		say "chromium: installed at $c"
	fi
	ln -sfn "$c" "$bin/chromium"
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(proto spire vault etcd postgres chromium)
for t in "${targets[@]}"; do
	case $t in
	postgres) install_postgres ;;
	chromium) install_chromium ;;
	*) build "$t" ;;
	esac
done
say "tools ready in $bin"
