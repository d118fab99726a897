// Package approval is human approval of Junior agents' writes: a request
// is recorded pending, an approver (never one who is part of the request)
// approves or denies it, and the agent redeems an approval once, for the
// credential it asked for. Everyone waiting on a change is woken at once.
package approval

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/store"
)

// Notifier tells people what happened.
type Notifier interface {
	Notify(ctx context.Context, kind, agent, role, summary string, detail map[string]string)
}

// Config is what a Book needs.
type Config struct {
	Store *store.Store
	// PendingTTL is how long a request waits for a decision; RedeemWithin
	// how long an approval may be redeemed.
	PendingTTL, RedeemWithin time.Duration
	Notifier                 Notifier
	Now                      func() time.Time
}

// Book keeps the approvals.
type Book struct {
	cfg Config

	mu      sync.Mutex
	changed chan struct{} // closed at the next change
}

// New returns the approvals of cfg.Store.
func New(cfg Config) *Book { return &Book{cfg: cfg} }

// Changed returns a channel closed at the next change of any approval.
// Take it before reading, so that no change is missed.
func (b *Book) Changed() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.changed == nil {
		b.changed = make(chan struct{})
	}
	return b.changed
}

// Fire wakes everyone waiting for a change.
func (b *Book) Fire() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.changed != nil {
		close(b.changed)
		b.changed = nil
	}
}

func (b *Book) db(ctx context.Context) *store.Store {
	return b.cfg.Store.ForRequest(edge.RequestIDs(ctx))
}

// Request records ap as a pending request and tells the approvers.
func (b *Book) Request(ctx context.Context, ap store.Approval) (store.Approval, error) {
	ap.ExpiresAt = ap.CreatedAt.Add(b.cfg.PendingTTL)
	ap.Status = store.ApprovalPending
	if err := b.db(ctx).PutApproval(ap); err != nil {
		return ap, fmt.Errorf("record approval request: %w", err)
	}
	b.Fire()
	edge.Logger(ctx).Info("credential waits for approval", slog.String("approval", ap.ID), slog.String(edge.LogRole, ap.Role))
	b.cfg.Notifier.Notify(ctx, "approval_requested", ap.AgentID, ap.Role,
		fmt.Sprintf("%s agent %s asks for %s role %s: %s (approve: atfctl approvals approve %s --reason ...)", ap.Level, ap.AgentID, ap.Class, ap.Role, ap.Justification, ap.ID),
		map[string]string{"approval_id": ap.ID, "expires_at": ap.ExpiresAt.Format(time.RFC3339)})
	return ap, nil
}

// Claim redeems approval id for decision decisionID and returns it;
// release gives it back if the credential cannot be issued after all.
func (b *Book) Claim(ctx context.Context, id, agent, role, grantID, decisionID string) (_ store.Approval, release func(), err error) {
	ap, err := b.db(ctx).ClaimApproval(id, agent, role, grantID, decisionID)
	if err != nil {
		// Not theirs, not approved, or spent: the caller can act on it.
		if r := (*store.Refusal)(nil); errors.As(err, &r) && (errors.Is(r, store.ErrConflict) || errors.Is(r, store.ErrNotFound)) {
			return ap, nil, &fault.Error{Kind: fault.Precondition, Msg: "approval cannot be redeemed: " + r.Msg, Err: err}
		}
		return ap, nil, fmt.Errorf("claim approval: %w", err)
	}
	b.Fire()
	return ap, func() {
		if err := b.db(ctx).ReleaseApproval(id, decisionID); err != nil {
			edge.Logger(ctx).Error("releasing an approval after a failed issuance failed", slog.String(edge.LogError, err.Error()))
		}
		b.Fire()
	}, nil
}

// Decide records approver's verdict on approval id. Nobody decides a
// request they are part of: the requester, or anyone along the delegation
// chain it acts under.
func (b *Book) Decide(ctx context.Context, id, approver string, approve bool, reason string) (store.Approval, error) {
	ap, err := b.cfg.Store.GetApproval(id)
	if err != nil {
		return ap, fmt.Errorf("get approval: %w", err)
	}
	if ap.AgentID == approver || slices.Contains(ap.Chain, approver) {
		edge.Logger(ctx).Warn("self-approval refused", slog.String("approval", ap.ID))
		return ap, fault.New(fault.Denied, "%s may not decide approval %s: it is part of the request", approver, ap.ID)
	}
	if owned, err := b.ownedBy(ctx, ap); err != nil || owned != "" {
		if err != nil {
			return ap, err
		}
		edge.Logger(ctx).Warn("approval by the agent's owner refused", slog.String("approval", ap.ID), slog.String(edge.LogAgent, owned))
		return ap, fault.New(fault.Denied, "%s owns %s, which approval %s is for: another approver must decide it", approver, owned, ap.ID)
	}
	if ap, err = b.db(ctx).DecideApproval(ap.ID, approver, approve, reason, b.cfg.RedeemWithin); err != nil {
		return ap, err
	}
	b.Fire()
	verb := "denied"
	if approve {
		verb = "approved"
	}
	edge.Logger(ctx).Info("approval "+verb, slog.String("approval", ap.ID), slog.String(edge.LogAgent, ap.AgentID), slog.String(edge.LogRole, ap.Role))
	b.cfg.Notifier.Notify(ctx, "approval_"+verb, ap.AgentID, ap.Role, fmt.Sprintf("%s %s %s's request for %s: %s", approver, verb, ap.AgentID, ap.Role, ap.Reason),
		map[string]string{"approval_id": ap.ID, "approver": approver})
	return ap, nil
}

// ownedBy is the agent of ap's request (the requester or one of its
// delegators) that the caller owns, "" if none: nobody approves a request
// of an agent they own.
func (b *Book) ownedBy(ctx context.Context, ap store.Approval) (string, error) {
	chain := ap.Chain // the delegators, then the requester
	if len(chain) == 0 {
		chain = []string{ap.AgentID}
	}
	for _, id := range chain {
		a, err := b.cfg.Store.GetAgent(id)
		switch {
		case errors.Is(err, store.ErrNotFound):
			continue
		case err != nil:
			return "", fmt.Errorf("approval: get agent: %w", err)
		}
		if edge.Owns(ctx, a.Owner) {
			return id, nil
		}
	}
	return "", nil
}

// Wait sends caller's approval id to send at once and at every change of
// its status, until it is no longer pending, ctx ends (nil) or stop is
// closed (errStop).
func (b *Book) Wait(ctx context.Context, id, caller string, stop <-chan struct{}, errStop error, send func(store.Approval) error) error {
	var last store.ApprovalStatus
	for {
		changed := b.Changed()
		ap, err := b.cfg.Store.GetApproval(id)
		if err == nil && ap.AgentID != caller {
			err = fmt.Errorf("%w: approval %s", store.ErrNotFound, id)
		}
		if err != nil {
			return fmt.Errorf("get approval: %w", err)
		}
		if ap.Status != last {
			if err := send(ap); err != nil {
				return err
			}
			last = ap.Status
		}
		if ap.Status != store.ApprovalPending {
			return nil // decided, expired or cancelled
		}
		timer := time.NewTimer(ap.ExpiresAt.Sub(b.cfg.Now()) + 10*time.Millisecond)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-stop:
			timer.Stop()
			return errStop
		case <-changed:
		case <-timer.C:
		}
		timer.Stop()
	}
}
