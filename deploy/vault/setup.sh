#!/usr/bin/env bash
# Configures a Vault server for the ATF broker (atfd). Run it once per Vault,
# as an operator whose token may write policies, token roles and auth methods
# (e.g. a root token). Running it again is safe: every step overwrites the same
# objects with the same values.
#
#   VAULT_ADDR=https://vault.example:8200 VAULT_TOKEN=... \
#   ATF_ALLOWED_POLICIES=reports-read,reports-write \
#   deploy/vault/setup.sh
#
# Environment:
#   VAULT_ADDR, VAULT_TOKEN, VAULT_CACERT, ...
#       read by the `vault` CLI as usual; `vault` must be on PATH.
#   ATF_ALLOWED_POLICIES (required)
#       comma-separated Vault policies the broker may put on an agent
#       credential. This is the hard ceiling: whatever the broker's own rules
#       say, Vault refuses any other policy (and always refuses "root").
#       Create these policies yourself; this script does not.
#   ATF_BROKER_SPIFFE_ID (optional)
#       atfd's own SPIFFE ID. When set, JWT auth is set up too, so that atfd
#       can log in with its JWT-SVID (audience "vault") instead of AppRole:
#         vault write auth/jwt/login role=atf-broker jwt=<JWT-SVID>
#       It then needs the trust domain's JWT signing keys, one of:
#   ATF_JWKS_URL
#       a JWKS URL serving them, e.g. SPIRE's OIDC discovery provider
#       (https://oidc.example/keys). Follows SPIRE's key rotation.
#   ATF_JWT_VALIDATION_PUBKEYS
#       a file of PEM public keys. Static: run the script again after SPIRE
#       rotates its JWT key. Meant for development.
#
# What it creates:
#   policy atf-broker          (atf-broker.hcl) for atfd's own token.
#   policy atf-anchor          (atf-anchor.hcl) for lineage anchor tokens.
#   token role atf-credential  agent credentials: child tokens (orphan=false),
#                              non-renewable, service tokens, at most 1 h,
#                              policies within ATF_ALLOWED_POLICIES and without
#                              the "default" policy. A create request that
#                              names no policy gets ALL allowed policies, so
#                              atfd always names them.
#   token role atf-anchor      lineage anchors: child tokens with policy
#                              atf-anchor and, for a role anchor, the policies
#                              of one role (within ATF_ALLOWED_POLICIES), with
#                              which it creates batch credentials; renewable.
#                              They also keep the "default" policy, which is
#                              what lets an anchor renew and look up itself.
#                              Each carries the Vault entity of the agent it
#                              holds credentials of (entity alias
#                              atf-agent-<32 hex digits of SHA-256 of its
#                              SPIFFE ID> on the token mount, created by
#                              Vault on first use), not atfd's, and so do
#                              its credentials: attach no policy to these
#                              entities, atfd refuses to issue if you do.
#   auth method approle/       enabled if missing, with role atf-broker:
#                              periodic (1 h) renewable tokens with policy
#                              atf-broker, secret IDs usable any number of
#                              times. Give atfd its credentials with
#                                vault read -field=role_id auth/approle/role/atf-broker/role-id
#                                vault write -f -field=secret_id auth/approle/role/atf-broker/secret-id
#   secrets engine transit/    enabled if missing, with key atf-oauth
#                              (ecdsa-p256), which signs atfd's OAuth access
#                              tokens (docs/oauth.md); atfd may sign with it,
#                              read its public keys and rotate it, never
#                              export it.
#   auth method jwt/           only with ATF_BROKER_SPIFFE_ID: enabled if
#                              missing, with role atf-broker: the same tokens
#                              as the AppRole, for a JWT-SVID whose subject is
#                              ATF_BROKER_SPIFFE_ID and audience "vault".
#
# Revoking a credential or anchor by accessor revokes everything below it in
# Vault's token tree; this is what makes lineage revocation work.
#
# The script prints what it does, never a token or secret.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

say() { printf 'atf-setup: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

command -v vault >/dev/null || die "vault CLI not found on PATH"
[ -n "${VAULT_ADDR:-}" ] || die "VAULT_ADDR is not set"
[ -n "${ATF_ALLOWED_POLICIES:-}" ] || die "ATF_ALLOWED_POLICIES is not set (comma-separated policies agents may be given)"
case ",$ATF_ALLOWED_POLICIES," in
*,root,*) die "ATF_ALLOWED_POLICIES must not contain root" ;;
esac

# Quiet CLI output: the script's own lines say what happened.
write() { vault write "$@" >/dev/null; }

say "policy atf-broker"
vault policy write atf-broker "$here/atf-broker.hcl" >/dev/null
say "policy atf-anchor"
vault policy write atf-anchor "$here/atf-anchor.hcl" >/dev/null

say "token role atf-credential (allowed policies: $ATF_ALLOWED_POLICIES)"
write auth/token/roles/atf-credential \
	allowed_policies="$ATF_ALLOWED_POLICIES" \
	disallowed_policies=root \
	orphan=false \
	renewable=false \
	token_type=service \
	token_explicit_max_ttl=3600 \
	token_no_default_policy=true

say "token role atf-anchor"
write auth/token/roles/atf-anchor \
	allowed_policies="atf-anchor,$ATF_ALLOWED_POLICIES" \
	disallowed_policies=root \
	orphan=false \
	renewable=true \
	token_type=service \
	allowed_entity_aliases='atf-agent-*'

# enabled PATH: whether an auth method was mounted at PATH/ when the script
# started.
methods=$(vault auth list -format=json)
enabled() { [[ $methods == *"\"$1/\""* ]]; }

if enabled approle; then
	say "auth method approle/ already enabled"
else
	say "enabling auth method approle/"
	vault auth enable approle >/dev/null
fi
say "approle role atf-broker"
write auth/approle/role/atf-broker \
	token_policies=atf-broker \
	token_period=1h \
	secret_id_num_uses=0

if [[ $(vault secrets list -format=json) == *'"transit/"'* ]]; then
	say "secrets engine transit/ already enabled"
else
	say "enabling secrets engine transit/"
	vault secrets enable transit >/dev/null
fi
say "transit key atf-oauth (ecdsa-p256)"
write transit/keys/atf-oauth type=ecdsa-p256 exportable=false

if [ -n "${ATF_BROKER_SPIFFE_ID:-}" ]; then
	case "$ATF_BROKER_SPIFFE_ID" in
	spiffe://*) ;;
	*) die "ATF_BROKER_SPIFFE_ID must be a spiffe:// ID" ;;
	esac
	if enabled jwt; then
		say "auth method jwt/ already enabled"
	else
		say "enabling auth method jwt/"
		vault auth enable jwt >/dev/null
	fi
	# SPIRE signs JWT-SVIDs with ES256 by default; ES384 and RS256 follow
	# its other key types.
	algs=jwt_supported_algs=ES256,ES384,RS256
	if [ -n "${ATF_JWKS_URL:-}" ]; then
		say "jwt/ keys from $ATF_JWKS_URL"
		write auth/jwt/config jwks_url="$ATF_JWKS_URL" "$algs"
	elif [ -n "${ATF_JWT_VALIDATION_PUBKEYS:-}" ]; then
		[ -r "$ATF_JWT_VALIDATION_PUBKEYS" ] || die "cannot read $ATF_JWT_VALIDATION_PUBKEYS"
		# One jwt_validation_pubkeys=@file argument per PEM block.
		keys=$(mktemp -d)
		trap 'rm -rf "$keys"' EXIT
		awk -v dir="$keys" '/-----BEGIN/ { n++ } n { print > (dir "/" n ".pem") }' "$ATF_JWT_VALIDATION_PUBKEYS"
		shopt -s nullglob
		args=()
		for f in "$keys"/*.pem; do
			args+=("jwt_validation_pubkeys=@$f")
		done
		[ ${#args[@]} -gt 0 ] || die "no PEM block in $ATF_JWT_VALIDATION_PUBKEYS"
		say "jwt/ keys: ${#args[@]} from $ATF_JWT_VALIDATION_PUBKEYS"
		write auth/jwt/config "${args[@]}" "$algs"
	else
		die "ATF_BROKER_SPIFFE_ID needs ATF_JWKS_URL or ATF_JWT_VALIDATION_PUBKEYS"
	fi
	say "jwt role atf-broker (subject $ATF_BROKER_SPIFFE_ID, audience vault)"
	write auth/jwt/role/atf-broker \
		role_type=jwt \
		user_claim=sub \
		bound_subject="$ATF_BROKER_SPIFFE_ID" \
		bound_audiences=vault \
		token_policies=atf-broker \
		token_period=1h
fi

say "done"
