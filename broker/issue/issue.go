// Package issue carries out a credential Plan (package decide): it
// reserves the credential against the live-credential limits, redeems the
// approval it rests on, creates the token under its lineage node's Vault
// anchor, reads the role's dynamic secret with it if the role names one,
// and records it, all or nothing: a step that fails undoes the
// ones before it, and a token the broker could not record is revoked
// before the caller hears anything. No credential leaves unrecorded.
//
// A batch token (the default) is recorded while Vault makes it (while
// Vault answers), and the record reserves its place in the live counts
// when they are kept in a store replicas share: the answer waits for the
// longer of the two, not for both in turn (docs/design.md §3.3).
package issue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/decide"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/failpoint"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/limits"
	"github.com/agentictrust/atf/broker/revoke"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/broker/tracing"
	"github.com/agentictrust/atf/broker/vault"
)

// Approvals redeems approvals.
type Approvals interface {
	Claim(ctx context.Context, id, agent, role, grantID, decisionID string) (store.Approval, func(), error)
}

// Config is what an Issuer needs.
type Config struct {
	Store     *store.Store
	Vault     *vault.Issuer
	Anchors   *revoke.Anchors
	Live      limits.Counter
	Approvals Approvals
	Tracer    trace.Tracer
	// Tokens signs the access tokens of roles of kind jwt; nil when the
	// OAuth endpoints are off (docs/oauth.md).
	Tokens Tokens
}

// Tokens signs access tokens (package accesstoken).
type Tokens interface {
	Issue(ctx context.Context, p decide.Plan) (vault.Credential, error)
}

// Issuer issues planned credentials.
type Issuer struct{ cfg Config }

// New returns an Issuer.
func New(cfg Config) *Issuer { return &Issuer{cfg: cfg} }

// reserveMargin is how much longer than the credential's lifetime its
// live-credential reservation is made for, to cover the issuance itself;
// Commit then records the real expiry.
const reserveMargin = 5 * time.Second

// Issue issues p for an agent whose record is at revision. A refusal on
// the way (a limit, a revocation or kill committed meanwhile, Vault not
// issuing) is a *decide.Refusal, to be audited as the decision's outcome;
// any other error left nothing issued and nothing recorded.
func (is *Issuer) Issue(ctx context.Context, p decide.Plan, revision uint64) (_ vault.Credential, err error) {
	expires := time.Now().Add(p.TTL + reserveMargin)
	// A batch token is named by the broker, so it can be recorded while
	// Vault makes it; not while Vault's breaker is open or probing, when
	// most calls fail and each would leave a record to void.
	beside := p.Role.Kind != config.KindJWT && kindOf(p) == vault.Batch && is.cfg.Vault.Answering()
	var inRecord *store.LiveReserve
	if beside {
		inRecord = is.cfg.Live.InRecord(p.Caller, p.Lineage(), p.Role.Name, expires)
	}
	var res *limits.Reservation
	var undo []func()
	defer func() {
		if err != nil {
			for _, u := range undo {
				u()
			}
		}
	}()
	if inRecord == nil {
		var lerr error
		res, lerr = is.cfg.Live.Reserve(p.Caller, p.Lineage(), p.Role.Name, expires)
		if fe := (*fault.Error)(nil); errors.As(lerr, &fe) && fe.Limit != "" {
			return vault.Credential{}, decide.Limit(p.Reasons, fe)
		} else if lerr != nil {
			return vault.Credential{}, lerr
		}
		undo = append(undo, func() { is.cfg.Live.Cancel(res) })
	}
	if id := p.ApprovalID; id != "" {
		ap, release, err := is.cfg.Approvals.Claim(ctx, id, p.Caller, p.Role.Name, p.GrantID, p.Reasons.DecisionID)
		if err != nil {
			return vault.Credential{}, err
		}
		undo = append(undo, release)
		if p, err = boundBy(p, ap); err != nil {
			return vault.Credential{}, err
		}
	}
	var cred vault.Credential
	if beside {
		cred, err = is.issueBeside(ctx, p, revision, inRecord)
	} else {
		cred, err = is.issueInTurn(ctx, p, revision, res)
	}
	if err != nil {
		return vault.Credential{}, err
	}
	failpoint.Hit(failpoint.IssueAfterRecord)
	if res != nil {
		is.cfg.Live.Commit(res, cred.Accessor, cred.ExpiresAt)
	}
	return cred, nil
}

// issueInTurn issues the credential, then records it: a service token has
// its accessor only once Vault made it, a dynamic secret is read with the
// token, and a batch token is made first while Vault is not answering.
func (is *Issuer) issueInTurn(ctx context.Context, p decide.Plan, revision uint64, res *limits.Reservation) (vault.Credential, error) {
	var cred vault.Credential
	var anchor string
	var err error
	if p.Role.Kind == config.KindJWT {
		cred, err = is.sign(ctx, p)
	} else {
		cred, anchor, err = is.create(ctx, p)
	}
	if err != nil {
		return cred, err
	}
	if p.Role.Dynamic != "" {
		if cred.Lease, err = is.readDynamic(ctx, p, cred); err != nil {
			return vault.Credential{}, err
		}
	}
	failpoint.Hit(failpoint.IssueAfterVault)
	if err := is.record(ctx, p, cred, anchor, revision, res.StoreID(), nil); err != nil {
		return vault.Credential{}, err
	}
	return cred, nil
}

// issueBeside issues a batch token whose record is committed while Vault
// makes it; it is handed out once both are done. A record refused (a
// revocation or kill committed meanwhile, a live-credential limit reached,
// which inRecord reserves in the record's own transaction) leaves the
// token in the broker, unused: it cannot be revoked alone, and expires
// within its TTL. A token Vault did not make voids the record.
func (is *Issuer) issueBeside(ctx context.Context, p decide.Plan, revision uint64, inRecord *store.LiveReserve) (vault.Credential, error) {
	var want vault.Credential
	var rerr error
	record := func(anchor *vault.Anchor) func(error) error {
		now := time.Now()
		want = vault.Credential{Accessor: "b." + edge.NewID(), Policies: slices.Sorted(slices.Values(p.Policies)), IssuedAt: now, ExpiresAt: now.Add(p.TTL)}
		recorded := make(chan error, 1)
		go func() { recorded <- is.record(ctx, p, want, anchor.Accessor, revision, "", inRecord) }()
		return func(verr error) error {
			failpoint.Hit(failpoint.IssueAfterVault)
			rerr = <-recorded
			if verr != nil && !refusedByStore(rerr) {
				// Recorded, or perhaps recorded (a store that did not
				// answer): voiding a record that is not there does nothing.
				is.void(ctx, p, want.Accessor, verr)
			}
			// The record's refusal says why (a revocation, a kill, a
			// limit), whatever Vault answered.
			return rerr
		}
	}
	cred, _, err := is.underAnchor(ctx, store.RoleNode(p.Node(), p.Role.Name), is.request(p), record)
	switch {
	case rerr != nil:
		return vault.Credential{}, rerr
	case err != nil:
		return vault.Credential{}, is.vaultRefusal(p, err)
	}
	// What the record says, which Vault's answer can only shorten.
	cred.Accessor, cred.IssuedAt = want.Accessor, want.IssuedAt
	if cred.ExpiresAt.After(want.ExpiresAt) {
		cred.ExpiresAt = want.ExpiresAt
	}
	return cred, nil
}

// refusedByStore says whether err is the store's refusal of a record
// (record's answers: a revocation, a kill, a change, a limit), after which
// the record is either absent or kept as refused: nothing to void.
func refusedByStore(err error) bool {
	return errors.As(err, new(*fault.Error)) || errors.As(err, new(*decide.Refusal))
}

// void undoes the record of a batch token Vault did not make (failed
// with err): its reservation is released, and the audit trail says so.
func (is *Issuer) void(ctx context.Context, p decide.Plan, accessor string, err error) {
	why := "Vault refused to issue it"
	if errors.Is(err, vault.ErrUnavailable) {
		why = "Vault did not issue it"
	}
	if verr := is.cfg.Store.ForRequest(edge.RequestIDs(ctx)).VoidCredential(p.Caller, accessor, why); verr != nil {
		edge.Logger(ctx).Error("voiding the record of a credential Vault did not issue failed; it counts as live until its expiry",
			slog.String(edge.LogError, verr.Error()), slog.String(edge.LogAccessor, accessor), slog.String(edge.LogDecisionID, p.Reasons.DecisionID))
	}
}

// boundBy holds p to what the approver saw in ap: a redemption that asks
// for another lifetime is refused, one that names none gets the approved
// one, never more; an access token carries the approved scopes at most
// (of those the redemption may have: the answer's scope says which), and
// none in common is a refusal.
func boundBy(p decide.Plan, ap store.Approval) (decide.Plan, error) {
	if p.Request.TTL != 0 && p.Request.TTL != ap.RequestedTTL {
		return p, fault.New(fault.Precondition, "approval %s was given for a lifetime of %s, not %s: redeem it as approved (or without a ttl)", ap.ID, ap.TTL, p.Request.TTL)
	}
	if ap.TTL > 0 {
		p.TTL = min(p.TTL, ap.TTL)
	}
	if len(ap.Scopes) > 0 {
		may := p.Request.Scopes
		if len(may) == 0 {
			may = p.Role.Scopes
		}
		p.Request.Scopes = slices.DeleteFunc(slices.Clone(may), func(sc string) bool { return !slices.Contains(ap.Scopes, sc) })
		if len(p.Request.Scopes) == 0 {
			return p, fault.New(fault.Precondition, "approval %s was given for the scopes %s, none of which this redemption may have (%s): redeem it as approved",
				ap.ID, strings.Join(ap.Scopes, " "), strings.Join(may, " "))
		}
	}
	return p, nil
}

// revokeUnrecorded revokes a service token the store refused to record
// (refused for err); a refused record is queued for revocation, which is
// then complete.
func (is *Issuer) revokeUnrecorded(ctx context.Context, err error, cred vault.Credential) {
	if rerr := is.cfg.Vault.Revoke(context.WithoutCancel(ctx), cred.Accessor); rerr != nil {
		edge.Logger(ctx).Error("revoking an unrecorded credential failed; it expires on its own", slog.String(edge.LogError, rerr.Error()),
			slog.String(edge.LogAccessor, cred.Accessor), slog.Time("expires_at", cred.ExpiresAt))
	} else if errors.Is(err, store.ErrDeregistered) || errors.Is(err, store.ErrRevoked) || errors.Is(err, store.ErrKilled) || errors.Is(err, store.ErrConflict) {
		_ = is.cfg.Store.CompleteRevocation(cred.Accessor)
	}
}

// kindOf is the kind of token p is issued as: a batch token unless the role
// asks for service tokens or the credential carries a use count, which
// batch tokens cannot (docs/design.md §6).
func kindOf(p decide.Plan) vault.Kind {
	if p.MaxUses > 0 || p.Role.Kind == string(vault.Service) {
		return vault.Service
	}
	return vault.Batch
}

// create makes the token in Vault under the anchor of the plan's role node:
// revoking that anchor revokes exactly the credentials of one role under
// one agent or grant, and revoking the node's own anchor above it all of
// the node's.
func (is *Issuer) create(ctx context.Context, p decide.Plan) (vault.Credential, string, error) {
	cred, anchor, err := is.underAnchor(ctx, store.RoleNode(p.Node(), p.Role.Name), is.request(p), nil)
	if err != nil {
		return cred, "", is.vaultRefusal(p, err)
	}
	if kindOf(p) == vault.Batch {
		// A batch token has no accessor: the broker names it.
		cred.Accessor = "b." + edge.NewID()
	}
	return cred, anchor, nil
}

// request is what Vault is asked for to issue p.
func (is *Issuer) request(p decide.Plan) vault.Request {
	return vault.Request{
		Kind:     kindOf(p),
		Policies: p.Policies,
		TTL:      p.TTL,
		NumUses:  p.MaxUses,
		Metadata: map[string]string{
			"atf_agent":       p.Caller,
			"atf_role":        p.Role.Name,
			"atf_level":       p.Level.String(),
			"atf_decision_id": p.Reasons.DecisionID,
			"atf_grant_id":    p.GrantID,
			"atf_chain":       strings.Join(p.Chain, " > "),
			"atf_grant_chain": strings.Join(p.GrantIDs, ","),
		},
		DisplayName: "atf-" + strings.ReplaceAll(p.Role.Name, "/", "-"),
	}
}

// vaultRefusal is the refusal of p for err, a failure to make its token
// in Vault (or its anchor).
func (is *Issuer) vaultRefusal(p decide.Plan, err error) error {
	var widened *vault.IdentityError
	switch {
	case errors.Is(err, store.ErrKilled):
		return decide.Deny(p.Reasons, authz.Decision{Reason: authz.Killed, Message: "the kill switch stopped this agent while the request was in flight"})
	case errors.Is(err, store.ErrRevoked), errors.Is(err, store.ErrDeregistered):
		// The store refused an anchor: a revocation committed while this
		// call was in flight.
		return decide.Deny(p.Reasons, authz.Decision{Reason: decide.ReasonRevoked, Message: "the lineage this credential belongs to was revoked"})
	case errors.As(err, &widened):
		return decide.Fail(p.Reasons, "vault_identity_policies", widened.Error(), fault.New(fault.Precondition,
			"Vault identity: Vault gives the Vault entity of agent %s identity policies beyond role %s's (an identity group or the entity's own policies); nothing was issued and the agent's Vault anchors were revoked; a Vault operator must remove those policies (decision %s)",
			p.Caller, p.Role.Name, p.Reasons.DecisionID))
	case errors.Is(err, vault.ErrUnavailable):
		return decide.Fail(p.Reasons, "vault_unavailable", "Vault did not issue the credential; nothing was issued", err)
	}
	return decide.Fail(p.Reasons, "vault_refused", "Vault refused to issue the credential; nothing was issued", err)
}

// sign signs the access token of a jwt role's plan: no Vault token, no
// anchor; the token's jti is its accessor, and its record in the store,
// under its lineage node, is what revocation and introspection judge it
// by (docs/oauth.md).
func (is *Issuer) sign(ctx context.Context, p decide.Plan) (vault.Credential, error) {
	if is.cfg.Tokens == nil {
		return vault.Credential{}, decide.Fail(p.Reasons, "oauth_off", "role "+p.Role.Name+" issues access tokens and the OAuth endpoints are off",
			fault.New(fault.Precondition, "role %s issues OAuth access tokens, and this broker's oauth section is off; nothing was issued (decision %s)", p.Role.Name, p.Reasons.DecisionID))
	}
	vctx, span := is.cfg.Tracer.Start(ctx, tracing.SpanVaultIssue)
	cred, err := is.cfg.Tokens.Issue(vctx, p)
	tracing.EndSpan(span, edge.Code(err))
	if err == nil {
		return cred, nil
	}
	edge.Logger(ctx).Error("signing an access token failed", slog.String(edge.LogError, err.Error()), slog.String(edge.LogDecisionID, p.Reasons.DecisionID))
	if errors.Is(err, vault.ErrUnavailable) {
		msg := fmt.Sprintf("Vault did not sign the access token of role %s; nothing was issued (decision %s)", p.Role.Name, p.Reasons.DecisionID)
		// An open breaker's retry time comes through err: the edge's
		// mapping finds it (Retry-After).
		return cred, decide.Fail(p.Reasons, "vault_unavailable", msg, &fault.Error{Kind: fault.Unavailable, Msg: msg, Err: err})
	}
	msg := fmt.Sprintf("Vault refused to sign the access token of role %s; nothing was issued (decision %s)", p.Role.Name, p.Reasons.DecisionID)
	return cred, decide.Fail(p.Reasons, "vault_refused", msg, fault.New(fault.Precondition, "%s", msg))
}

// readDynamic reads the role's dynamic secret with cred's token, so that
// the lease hangs under the credential, and under its anchor
// (docs/design.md §3.4); the lease ends with the credential at the latest.
// If the read fails, cred (a service token: config makes it one) is
// revoked, and with it any lease the read may have made: nothing of the
// issuance outlives the failure. The answer names the role and path; the
// log has Vault's words, which name no secret.
func (is *Issuer) readDynamic(ctx context.Context, p decide.Plan, cred vault.Credential) (vault.Lease, error) {
	vctx, span := is.cfg.Tracer.Start(ctx, tracing.SpanVaultDynamic)
	lease, err := is.cfg.Vault.ReadDynamic(vctx, cred.Token, p.Role.Dynamic)
	tracing.EndSpan(span, edge.Code(err))
	if err == nil {
		if lease.ExpiresAt.After(cred.ExpiresAt) {
			// Vault revokes the lease with the token that made it.
			lease.ExpiresAt = cred.ExpiresAt
		}
		return lease, nil
	}
	log := edge.Logger(ctx).With(slog.String(edge.LogDecisionID, p.Reasons.DecisionID), slog.String(edge.LogRole, p.Role.Name), slog.String(edge.LogAccessor, cred.Accessor))
	log.Error("reading the role's dynamic secret failed; revoking the credential", slog.String(edge.LogError, err.Error()))
	if rerr := is.cfg.Vault.Revoke(context.WithoutCancel(ctx), cred.Accessor); rerr != nil {
		log.Error("revoking the credential of a failed dynamic-secret read failed; it and any lease expire on their own",
			slog.String(edge.LogError, rerr.Error()), slog.Time("expires_at", cred.ExpiresAt))
	}
	kind, reason, said := fault.Precondition, "dynamic_secret_refused", "Vault refused"
	if errors.Is(err, vault.ErrUnavailable) {
		kind, reason, said = fault.Unavailable, "dynamic_secret_unavailable", "Vault could not give"
	}
	msg := fmt.Sprintf("%s the dynamic secret of role %s (%s); nothing was issued (decision %s)", said, p.Role.Name, p.Role.Dynamic, p.Reasons.DecisionID)
	return vault.Lease{}, decide.Fail(p.Reasons, reason, msg, fault.New(kind, "%s", msg))
}

// underAnchor creates a credential under node's anchor. If Vault refuses
// the anchor (revoked or expired behind the broker's back), it is replaced
// once. If Vault widens the anchor or the credential through the agent's
// Vault entity, every anchor of that entity goes (retire).
//
// beside, if set, is started with each attempt's anchor before Vault is
// asked, and the function it returns is called once Vault answered, with
// Vault's error (nil if it issued): an error of that function ends the
// issuance, whatever Vault answered (issueBeside's record).
func (is *Issuer) underAnchor(ctx context.Context, node string, req vault.Request, beside func(*vault.Anchor) func(error) error) (vault.Credential, string, error) {
	for attempt := 0; ; attempt++ {
		anchor, err := is.cfg.Anchors.Get(ctx, node)
		if err != nil {
			return vault.Credential{}, "", is.retire(ctx, err)
		}
		var done func(error) error
		if beside != nil {
			done = beside(anchor)
		}
		req.Parent = anchor
		vctx, span := is.cfg.Tracer.Start(ctx, tracing.SpanVaultIssue)
		cred, err := is.cfg.Vault.Issue(vctx, req)
		tracing.EndSpan(span, edge.Code(err))
		var berr error
		if done != nil {
			// The record first: retiring the entity's anchors would have
			// it refused as revoked, hiding why nothing was issued.
			berr = done(err)
		}
		if err = is.retire(ctx, err); berr != nil {
			return vault.Credential{}, "", berr
		}
		if errors.Is(err, vault.ErrRejected) && !errors.As(err, new(*vault.IdentityError)) && attempt == 0 {
			// The role anchor, or the node's above it, is gone: both are
			// made anew.
			is.cfg.Anchors.Drop(store.BaseNode(node))
			continue
		}
		return cred, anchor.Accessor, err
	}
}

// retire fails closed on err, if it says Vault gives an agent's entity
// identity policies (docs/security.md, "Vault identity"): they widen every
// token of the entity, so its anchors are revoked, and with them the
// agent's credentials; the refused token itself already was. It returns
// err.
func (is *Issuer) retire(ctx context.Context, err error) error {
	var widened *vault.IdentityError
	if !errors.As(err, &widened) {
		return err
	}
	n, rerr := is.cfg.Anchors.Retire(context.WithoutCancel(ctx), widened.Entity)
	log := edge.Logger(ctx).With(slog.String("vault_entity", widened.Entity), slog.Any("identity_policies", widened.Policies), slog.Int("anchors_revoked", n))
	if rerr != nil || widened.RevokeErr != nil {
		log.Error("Vault gives an agent's entity identity policies; revoking its tokens failed in part, they expire on their own", slog.String(edge.LogError, errors.Join(rerr, widened.RevokeErr).Error()))
	} else {
		log.Error("Vault gives an agent's entity identity policies; refused, and revoked its anchors with their credentials")
	}
	return err
}

// record records cred; if the store refuses, cred is revoked before the
// caller hears anything: never hand out a credential the broker has not
// recorded. (A refused record is queued for revocation too.)
func (is *Issuer) record(ctx context.Context, p decide.Plan, cred vault.Credential, anchor string, revision uint64, live string, reserve *store.LiveReserve) error {
	_, span := is.cfg.Tracer.Start(ctx, tracing.SpanStoreRecord)
	kind, why := "", p.Reasons.Detail()
	switch {
	case p.Role.Kind == config.KindJWT:
		kind, why["kind"], why["audience"] = store.KindJWT, store.KindJWT, p.Role.Audience
	case kindOf(p) == vault.Batch:
		kind = store.KindBatch
	}
	err := is.cfg.Store.ForRequest(edge.RequestIDs(ctx)).RecordCredential(store.Credential{
		Accessor:        cred.Accessor,
		Kind:            kind,
		AgentID:         p.Caller,
		Role:            p.Role.Name,
		Level:           p.Level,
		Policies:        cred.Policies,
		DecisionID:      p.Reasons.DecisionID,
		IssuedAt:        cred.IssuedAt.UTC(),
		ExpiresAt:       cred.ExpiresAt.UTC(),
		GrantID:         p.GrantID,
		Anchor:          anchor,
		Chain:           p.Chain,
		GrantIDs:        p.GrantIDs,
		ApprovalID:      p.ApprovalID,
		LeaseID:         cred.Lease.ID,
		AgentRevision:   revision,
		PolicyVersion:   p.Reasons.PolicyVersion,
		Why:             why,
		LiveReservation: live,
		Reserve:         reserve,
	})
	tracing.EndSpan(span, edge.Code(err))
	if err == nil {
		return nil
	}
	// A batch token cannot be revoked alone, nor can an access token; they
	// never left the broker and expire within their TTL. A service token
	// is revoked now.
	if kind == "" {
		is.revokeUnrecorded(ctx, err, cred)
	}
	if fe, ok := limits.Refused(err); ok {
		return decide.Limit(p.Reasons, fe)
	}
	id := p.Reasons.DecisionID
	switch {
	case errors.Is(err, store.ErrConflict):
		return &fault.Error{Kind: fault.Aborted, Err: decide.ErrChanged,
			Msg: fmt.Sprintf("agent %s's registration changed while the credential was issued; nothing was issued, retry (decision %s)", p.Caller, id)}
	case errors.Is(err, store.ErrKilled):
		return fault.New(fault.Denied, "agent %s was stopped by the kill switch (decision %s)", p.Caller, id)
	case errors.Is(err, store.ErrDeregistered):
		return fault.New(fault.Denied, "agent %s was deregistered (decision %s)", p.Caller, id)
	case errors.Is(err, store.ErrRevoked):
		return fault.New(fault.Denied, "the lineage this credential belongs to was revoked (decision %s)", id)
	}
	return err
}
