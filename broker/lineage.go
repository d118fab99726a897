package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/failpoint"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/broker/vault"
	"github.com/agentictrust/atf/delegation"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

const (
	// anchorTTL is how long an anchor lives; it is replaced once less than
	// anchorReserve is left, so every credential and child anchor made
	// under it can live out its full lifetime.
	anchorTTL     = 4 * time.Hour
	anchorReserve = 70 * time.Minute
	// inlineRevokeTimeout bounds the Vault work a revoking call waits for;
	// the rest finishes from the queue.
	inlineRevokeTimeout = 30 * time.Second
)

// anchors holds the broker's current Vault anchor per lineage node, in
// memory only: the store keeps their accessors, never their tokens.
//
// Anchors of different nodes are made concurrently, and the map is locked
// only to be read or changed, never across a Vault call or a commit: a
// thousand agents starting together would otherwise queue behind one
// another's anchors, and every issuance and revocation behind them.
type anchors struct {
	issuer *vault.Issuer
	store  *store.Store

	mu sync.Mutex
	m  map[string]*vault.Anchor
	// making holds the anchors being made, by node; everyone asking for a
	// node meanwhile waits for the one making.
	making map[string]*making
}

// making is one anchor being made.
type making struct {
	done chan struct{} // closed once an and err are set
	an   *vault.Anchor
	err  error
	// dropped: the node was revoked meanwhile, so the anchor is handed to
	// those who asked before, but not kept.
	dropped bool
}

// get returns a usable anchor for node, creating it (and its parents) if
// needed: an agent's anchor hangs under the broker's token, a grant's under
// its parent grant's or its delegator's.
func (a *anchors) get(ctx context.Context, node string) (*vault.Anchor, error) {
	return a.getBelow(ctx, node, nil)
}

// getBelow is get for the anchor of a parent of the nodes below, whose
// anchors wait on it.
func (a *anchors) getBelow(ctx context.Context, node string, below []string) (*vault.Anchor, error) {
	if len(below) > 64 || slices.Contains(below, node) {
		return nil, errors.New("broker: anchor chain too deep or cyclic (corrupted grants?)")
	}
	for {
		a.mu.Lock()
		if an := a.m[node]; a.issuer.Usable(an, anchorReserve) {
			a.mu.Unlock()
			return an, nil
		}
		mk := a.making[node]
		if mk == nil {
			break // a.mu held
		}
		a.mu.Unlock()
		select {
		case <-mk.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		// Unless the caller making it gave up waiting for a parent's, it
		// is everyone's answer.
		if ctx.Err() != nil || !errors.Is(mk.err, context.Canceled) && !errors.Is(mk.err, context.DeadlineExceeded) {
			return mk.an, mk.err
		}
	}
	mk := &making{done: make(chan struct{})}
	if a.making == nil {
		a.making = map[string]*making{}
	}
	a.making[node] = mk
	a.mu.Unlock()
	mk.an, mk.err = a.create(ctx, node, append(below, node))
	a.mu.Lock()
	if a.making[node] == mk {
		delete(a.making, node)
	}
	if mk.err == nil && !mk.dropped {
		a.m[node] = mk.an
	}
	a.mu.Unlock()
	close(mk.done)
	return mk.an, mk.err
}

// create makes and records an anchor for node; path is node and the nodes
// below it waiting on it.
func (a *anchors) create(ctx context.Context, node string, path []string) (*vault.Anchor, error) {
	var parent *vault.Anchor
	parentAccessor := ""
	if id, ok := strings.CutPrefix(node, "grant:"); ok {
		g, err := a.store.GetGrant(id)
		if err != nil {
			return nil, err
		}
		up := store.AgentNode(g.Delegator)
		if g.ParentID != "" {
			up = store.GrantNode(g.ParentID)
		}
		if parent, err = a.getBelow(ctx, up, path); err != nil {
			return nil, err
		}
		parentAccessor = parent.Accessor
	}
	// Others may be waiting for it: the caller's giving up does not stop
	// it (the Vault timeout bounds it).
	ctx = context.WithoutCancel(ctx)
	an, err := a.issuer.CreateAnchor(ctx, parent, anchorTTL, map[string]string{"atf_node": node})
	if err != nil {
		return nil, err
	}
	failpoint.Hit(failpoint.AnchorAfterVault)
	// Recorded before use: a revocation must always find it.
	if err := a.store.AddAnchor(store.Anchor{Accessor: an.Accessor, Node: node, Parent: parentAccessor, CreatedAt: time.Now().UTC(), ExpiresAt: an.ExpiresAt.UTC()}); err != nil {
		_ = a.issuer.Revoke(ctx, an.Accessor)
		return nil, err
	}
	return an, nil
}

// drop forgets the anchors of revoked nodes, and those being made for them.
func (a *anchors) drop(nodes ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, n := range nodes {
		delete(a.m, n)
		if mk := a.making[n]; mk != nil {
			mk.dropped = true
			delete(a.making, n) // later callers make anew
		}
	}
}

// dropAll forgets every anchor (the global kill switch revoked them all).
func (a *anchors) dropAll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	clear(a.m)
	for _, mk := range a.making {
		mk.dropped = true
	}
	clear(a.making)
}

// hub fans revocation events out to the agents watching them.
type hub struct {
	mu   sync.Mutex
	subs map[string]map[chan *brokerv1.WatchRevocationsResponse]bool
}

// subscribe registers a watcher for agent; cancel removes it.
func (h *hub) subscribe(agent string) (<-chan *brokerv1.WatchRevocationsResponse, func()) {
	ch := make(chan *brokerv1.WatchRevocationsResponse, 64)
	h.mu.Lock()
	if h.subs == nil {
		h.subs = map[string]map[chan *brokerv1.WatchRevocationsResponse]bool{}
	}
	if h.subs[agent] == nil {
		h.subs[agent] = map[chan *brokerv1.WatchRevocationsResponse]bool{}
	}
	h.subs[agent][ch] = true
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.subs[agent][ch] {
			delete(h.subs[agent], ch)
			close(ch)
		}
	}
}

// publish sends ev to agent's watchers. A watcher too slow to keep up is
// cut off (its stream ends), so it reconnects and refetches rather than
// missing an event silently.
func (h *hub) publish(agent string, ev *brokerv1.WatchRevocationsResponse) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs[agent] {
		select {
		case ch <- ev:
		default:
			delete(h.subs[agent], ch)
			close(ch)
		}
	}
}

// revokeLineage commits the revocation of root's lineage, then revokes it
// in Vault, tells the affected agents and writes the audit summary.
func (s *Server) revokeLineage(ctx context.Context, root store.Root, actor, reason string) (*brokerv1.RevocationSummary, error) {
	start := time.Now()
	reason = audit.Redact(reason)
	rev, err := s.db(ctx).RevokeLineage(root, actor, reason)
	if err != nil {
		return nil, fmt.Errorf("revoke lineage: %w", err)
	}
	failpoint.Hit(failpoint.RevokeAfterCommit)
	return s.finishRevocation(ctx, root, actor, reason, rev, start, time.Since(start), true), nil
}

// finishRevocation does what follows a committed revocation.
//
// With wait, it waits (briefly) for Vault to confirm; without, it leaves
// Vault to the background revoker and answers at once.
func (s *Server) finishRevocation(ctx context.Context, root store.Root, actor, reason string, rev store.Revocation, start time.Time, commit time.Duration, wait bool) *brokerv1.RevocationSummary {
	nodes := make([]string, 0, len(rev.Grants)+1)
	if root.AgentID != "" {
		nodes = append(nodes, store.AgentNode(root.AgentID))
	}
	subject := root.String()
	if root == (store.Root{}) {
		subject = "credentials"
	}
	events := map[string]*brokerv1.WatchRevocationsResponse{}
	event := func(agent string) *brokerv1.WatchRevocationsResponse {
		if events[agent] == nil {
			events[agent] = &brokerv1.WatchRevocationsResponse{Reason: reason, Time: timestamppb.Now()}
		}
		return events[agent]
	}
	for _, g := range rev.Grants {
		nodes = append(nodes, store.GrantNode(g.ID))
		ev := event(g.Delegatee)
		ev.GrantIds = append(ev.GrantIds, g.ID)
	}
	s.anchors.drop(nodes...)
	if len(rev.Approvals) > 0 {
		s.approvals.fire()
	}
	// Agents hear at once: the broker already refuses everything revoked,
	// whatever Vault is doing.
	for agent, accs := range rev.Credentials {
		ev := event(agent)
		ev.Accessors = append(ev.Accessors, accs...)
		s.live.remove(accs...)
	}
	for agent, ev := range events {
		s.hub.publish(agent, ev)
	}

	timeout := inlineRevokeTimeout
	if !wait {
		timeout = 0 // nothing confirmed inline; the revoker is woken
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	confirmed := s.revoker.revoke(rctx, rev.Queued)
	cancel()
	sum := &brokerv1.RevocationSummary{
		GrantsRevoked:      int32(len(rev.Grants)),
		CredentialsRevoked: int32(rev.CredentialCount()),
		VaultConfirmed:     int32(confirmed),
		VaultPending:       int32(len(rev.Queued) - confirmed),
		CommitDuration:     durationpb.New(commit),
		TotalDuration:      durationpb.New(time.Since(start)),
	}
	if err := s.db(ctx).AppendAudit(store.AuditRecord{Kind: "lineage_revoked", Actor: actor, Subject: subject, Detail: map[string]string{
		"reason":              reason,
		"grants_revoked":      itoa(sum.GrantsRevoked),
		"credentials_revoked": itoa(sum.CredentialsRevoked),
		"vault_confirmed":     itoa(sum.VaultConfirmed),
		"vault_pending":       itoa(sum.VaultPending),
		"commit_duration":     commit.String(),
		"total_duration":      sum.TotalDuration.AsDuration().String(),
	}}); err != nil {
		edge.Logger(ctx).Error("writing the revocation audit summary failed", slog.String(edge.LogError, err.Error()))
	}
	edge.Logger(ctx).Info("lineage revoked", slog.String("root", subject), slog.Int("grants", len(rev.Grants)),
		slog.Int("credentials", rev.CredentialCount()), slog.Int("vault_confirmed", confirmed),
		slog.Int("vault_pending", len(rev.Queued)-confirmed), slog.Duration("commit", commit), slog.Duration(edge.LogDuration, time.Since(start)))
	return sum
}

// principal is an agent as delegation sees it: its manifest narrowed to the
// roles its level may hold (Junior writes included: each still needs a
// human's approval when used).
func (s *Server) principal(a store.Agent) delegation.Agent {
	var roles []string
	for _, r := range a.Roles {
		if role, ok := s.roles[r]; ok && s.gate.LevelMayRequest(a.Level, role.Authz().Class) {
			roles = append(roles, r)
		}
	}
	return delegation.Agent{ID: a.ID, Level: delegation.Level(a.Level), Active: a.Usable(), Roles: roles}
}

// chainOf loads the chain down to grantID and its delegators as they are
// now.
func (s *Server) chainOf(grantID string) ([]delegation.Grant, map[string]delegation.Agent, error) {
	chain, err := s.store.Chain(grantID)
	if err != nil {
		return nil, nil, err
	}
	ancestors := make(map[string]delegation.Agent, len(chain))
	for _, g := range chain {
		a, err := s.store.GetAgent(g.Delegator)
		if errors.Is(err, store.ErrNotFound) {
			continue // counts as deregistered
		}
		if err != nil {
			return nil, nil, err
		}
		ancestors[g.Delegator] = s.principal(a)
	}
	return chain, ancestors, nil
}

func itoa(n int32) string { return strconv.Itoa(int(n)) }
