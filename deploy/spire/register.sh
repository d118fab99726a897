#!/usr/bin/env bash
# SPIRE registration entries for the ATF broker (atfd) and its agents, made
# with `spire-server entry create` against your SPIRE server. On Kubernetes
# with spire-controller-manager, use deploy/k8s/clusterspiffeid.yaml (and
# agents-clusterspiffeid.yaml) instead: the controller makes these entries.
#
#   register.sh k8s-nodes                          once per cluster: the parent of the k8s entries
#   register.sh atfd-k8s                           atfd as deploy/k8s runs it
#   register.sh atfd-unix UID [BINARY]             atfd as deploy/systemd runs it (UID: of user atf)
#   register.sh agent-k8s NAMESPACE SERVICE_ACCOUNT
#   register.sh agent-unix NAME UID [BINARY]
#
# Running it again is safe: an entry that exists already is left as it is.
#
# Environment:
#   ATF_TRUST_DOMAIN  default example.org.
#   SPIRE_SERVER      the spire-server command, default spire-server (on the
#                     server's host). In Kubernetes, e.g.
#                       SPIRE_SERVER="kubectl exec -n spire-server spire-server-0 -c spire-server -- spire-server"
#   SPIRE_SERVER_SOCKET  the server's API socket, if not the default
#                     (/tmp/spire-server/private/api.sock).
#   K8S_CLUSTER       (k8s-*) the cluster name the SPIRE agents attest with
#                     (k8s_psat node attestor, its "cluster" setting).
#   VM_AGENT_ID       (*-unix) the SPIFFE ID of the SPIRE agent on the host,
#                     e.g. spiffe://example.org/spire/agent/x509pop/<fingerprint>
#                     (see `spire-server agent list`).
#
# IDs, as the rest of the project expects them:
#   spiffe://<td>/atfd                       the broker: the default --broker-id
#                                            of atfctl and agents, and the subject
#                                            Vault's JWT role is bound to
#                                            (deploy/vault/setup.sh).
#   spiffe://<td>/agents/<ns>/<sa>           an agent pod (agent-k8s), the layout of
#                                            deploy/k8s/agents-clusterspiffeid.yaml.
#   spiffe://<td>/agents/<name>              an agent on a host (agent-unix).
#   spiffe://<td>/ops/<person>               people running atfctl (admins,
#                                            approvers, security operators in
#                                            atfd's config). They need no entry:
#                                            mint a short-lived SVID for them on
#                                            the server's host,
#                                              spire-server x509 mint -spiffeID spiffe://<td>/ops/alice -ttl 8h -write DIR
#                                            which writes DIR/svid.pem, key.pem and
#                                            bundle.pem for atfctl's --svid,
#                                            --svid-key and --bundle.
#
# Selectors:
#   k8s     k8s:ns and k8s:sa pin the namespace and service account;
#           k8s:container-name keeps the ID from other containers of the pod.
#   unix    unix:uid is the process's user: one user per agent. unix:path is
#           the binary that calls the Workload API (atfctl, for an agent that
#           gets its credentials through atfctl); it needs
#           discover_workload_path = true in the SPIRE agent's unix
#           WorkloadAttestor, and survives upgrades, unlike unix:sha256.
#           systemd:id:atfd.service (the systemd workload attestor) is another
#           way to pick atfd out.
#   Docker  docker:label:<key>:<value> selectors on the container; not made
#           here.
set -euo pipefail

say() { printf 'atf-register: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
usage() { grep '^#   register.sh' "$0" | cut -c3- >&2; exit 2; }

td=${ATF_TRUST_DOMAIN:-example.org}
read -ra server <<<"${SPIRE_SERVER:-spire-server}"
socket=()
[ -n "${SPIRE_SERVER_SOCKET:-}" ] && socket=(-socketPath "$SPIRE_SERVER_SOCKET")

need() { [ -n "${!1:-}" ] || die "$1 is not set (see the header of $0)"; }
# The node alias of the cluster's SPIRE agents (k8s-nodes).
k8s_parent() { need K8S_CLUSTER; parent="spiffe://$td/k8s-nodes/$K8S_CLUSTER"; }
isuid() { [[ $1 =~ ^[0-9]+$ ]] || die "UID must be a number, not \"$1\" (id -u USER on the host)"; }

# create ARGS...: spire-server entry create ARGS, printed first; an existing
# entry is not an error.
create() {
	say "spire-server entry create $*"
	local out
	if out=$("${server[@]}" entry create "$@" "${socket[@]}" 2>&1); then
		return 0
	fi
	if [[ $out == *"similar entry already exists"* ]]; then
		say "already registered"
		return 0
	fi
	printf '%s\n' "$out" >&2
	die "spire-server entry create failed"
}

[ $# -ge 1 ] || usage
what=$1
shift
case "$what" in
k8s-nodes)
	[ $# -eq 0 ] || usage
	# A node alias: every SPIRE agent of the cluster, whichever node it is
	# on, is the parent of the entries below.
	k8s_parent
	create -node -spiffeID "$parent" -selector "k8s_psat:cluster:$K8S_CLUSTER"
	;;
atfd-k8s)
	[ $# -eq 0 ] || usage
	# deploy/k8s: namespace atf, service account atfd, container atfd.
	k8s_parent
	create -parentID "$parent" -spiffeID "spiffe://$td/atfd" \
		-selector k8s:ns:atf -selector k8s:sa:atfd -selector k8s:container-name:atfd
	;;
atfd-unix)
	[ $# -ge 1 ] && [ $# -le 2 ] || usage
	need VM_AGENT_ID
	isuid "$1"
	# deploy/systemd: User=atf, /usr/local/bin/atfd.
	create -parentID "$VM_AGENT_ID" -spiffeID "spiffe://$td/atfd" \
		-selector "unix:uid:$1" -selector "unix:path:${2:-/usr/local/bin/atfd}"
	;;
agent-k8s)
	[ $# -eq 2 ] || usage
	k8s_parent
	create -parentID "$parent" -spiffeID "spiffe://$td/agents/$1/$2" \
		-selector "k8s:ns:$1" -selector "k8s:sa:$2"
	;;
agent-unix)
	[ $# -ge 2 ] && [ $# -le 3 ] || usage
	need VM_AGENT_ID
	isuid "$2"
	selectors=(-selector "unix:uid:$2")
	[ $# -eq 3 ] && selectors+=(-selector "unix:path:$3")
	create -parentID "$VM_AGENT_ID" -spiffeID "spiffe://$td/agents/$1" "${selectors[@]}"
	;;
*)
	usage
	;;
esac
