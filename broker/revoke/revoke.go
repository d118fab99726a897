// Package revoke carries out revocations once the store has committed
// them: it forgets the revoked nodes' Vault anchors, tells the agents
// watching (WatchRevocations), revokes the anchors and credentials in Vault
// (inline for a while, then from the store's durable queue, with backoff,
// across restarts) and writes the audit summary. It also holds the anchor
// cache issuance uses and the global kill switch as committed.
//
// # Basics
//
// A revocation is committed first (store), so it is in force, for the
// broker, before anything happens in Vault: Lineage, Kill, KillAll and
// Sessions commit and then Finish. Finish never fails; what Vault does not
// confirm stays queued.
package revoke

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/failpoint"
	"github.com/agentictrust/atf/broker/fault"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/broker/vault"
	brokerv1 "github.com/agentictrust/atf/proto/atf/broker/v1"
)

// Config is what a Revoker needs.
type Config struct {
	Store *store.Store
	Vault *vault.Issuer
	// Live forgets the revoked credentials' counts.
	Live interface {
		Remove(agent string, accessors ...string)
	}
	// Approvals is told when approvals were cancelled.
	Approvals interface{ Fire() }
	// RolePolicies are a role's Vault policies, which its role anchors
	// hold to create its batch credentials.
	RolePolicies func(role string) []string
	// Feed, with a shared store, tells the other replicas what Finish,
	// Kill and KillAll did here (Change), and carries the revocation
	// events to the watchers of every replica, this one's too, in one
	// order that watches resume from. Without it, the events of the last
	// ten minutes are kept in memory for that.
	Feed Feed
	// Lead, with a shared store, runs the durable queue's background
	// drain only while this replica leads it (one replica at a time,
	// elected in the store): lead calls run with a context that ends when
	// the leadership does, and again at every new term, until ctx ends.
	// Nil: this replica drains alone.
	Lead func(ctx context.Context, run func(context.Context))
	// ResumeWindow is how long the journal keeps events for the watches
	// that resume (the feed's store.etcd.resume_window); marks go out at
	// least four times within it. Default ten minutes.
	ResumeWindow time.Duration
	Log          *slog.Logger
}

// Revoker carries out revocations.
type Revoker struct {
	cfg     Config
	anchors *Anchors
	hub     hub
	queue   *queue
}

// New returns a Revoker; the global kill switch starts as the store has
// it. Start its queue with Start.
func New(cfg Config) (*Revoker, error) {
	r := &Revoker{cfg: cfg, anchors: &Anchors{issuer: cfg.Vault, store: cfg.Store, policies: cfg.RolePolicies, m: map[string]*vault.Anchor{}, sweepAt: 1024},
		queue: newQueue(cfg.Store, cfg.Vault, cfg.Log, cfg.Lead)}
	r.queue.left = func() { r.share(Change{Queued: true}) }
	// Positions are the feed's, or this process's alone: a cursor of
	// another run cannot resume.
	r.hub.epoch = "m" + rand.Text()
	if cfg.ResumeWindow <= 0 {
		r.cfg.ResumeWindow = 10 * time.Minute
	}
	r.hub.ring.keep = r.cfg.ResumeWindow
	if cfg.Feed != nil {
		r.hub.epoch, r.hub.pos = cfg.Feed.Start()
	}
	if _, err := cfg.Store.GlobalKill(); err != nil {
		return nil, err
	}
	return r, nil
}

// Start starts retrying the durable queue; Stop stops it.
func (r *Revoker) Start() { r.queue.start() }

// Stop stops the queue's retries (the queue stays in the store).
func (r *Revoker) Stop() { r.queue.stop() }

// Anchors is the anchor cache issuance hangs credentials under.
func (r *Revoker) Anchors() *Anchors { return r.anchors }

// GlobalKill is the global kill switch in force (nil: released), read
// from the store on every call, never from memory: a switch flipped on
// any replica stops every one at once, and from the commit of the switch
// on, not once a KillAll has revoked every lineage. A store that cannot be
// read stops every agent (fail closed).
func (r *Revoker) GlobalKill() *store.Kill {
	gk, err := r.cfg.Store.GlobalKill()
	if err != nil {
		return &store.Kill{At: time.Now().UTC(), By: "atfd", Reason: "the store cannot be read, so whether the kill switch is set is unknown: nothing is issued until it can"}
	}
	return gk
}

// endStopped ends the revocation watches of those of agents that may no
// longer get anything, or of every agent under the global kill switch,
// after the events already sent to them.
func (r *Revoker) endStopped(agents []string) {
	if gk := r.GlobalKill(); gk != nil {
		r.hub.end("", fault.New(fault.Denied, "the global kill switch stops every agent (since %s): the revocation watch ends; "+
			"only a security operator can release it", gk.At.Format(time.RFC3339)))
		return
	}
	for _, id := range agents {
		a, err := r.cfg.Store.GetAgent(id)
		switch {
		case err != nil || a.Usable():
			// Unknown callers (and no agent, "") may watch: there is
			// nothing to hear. A failed read leaves the watch be.
		case a.Kill != nil:
			r.hub.end(id, fault.New(fault.Denied, "%s is stopped by the kill switch: its revocation watch ends; only a security operator can release it", id))
		default:
			r.hub.end(id, fault.New(fault.Denied, "%s is deregistered: its revocation watch ends", id))
		}
	}
}

// db is the store handle of the request in ctx. Its revocations leave
// listing their credentials to Finish (store.SettleLater), which tells
// Vault first.
func (r *Revoker) db(ctx context.Context) *store.Store {
	return r.cfg.Store.ForRequest(edge.RequestIDs(ctx)).SettleLater()
}

// Kill stops agent id (and, with lineage, every agent below it in its
// delegation tree) and revokes what they hold; killed lists the agents
// stopped now. Without wait it does not wait for Vault.
func (r *Revoker) Kill(ctx context.Context, id, actor, reason string, lineage, wait bool) (killed []string, sum *brokerv1.RevocationSummary, err error) {
	start := time.Now()
	rev, killed, err := r.db(ctx).KillAgent(id, actor, reason, lineage)
	if err != nil {
		return nil, nil, fmt.Errorf("kill: %w", err)
	}
	for _, k := range killed {
		r.anchors.Drop(store.AgentNode(k))
	}
	// Whoever waits for an approval hears of the cancellation now.
	r.cfg.Approvals.Fire()
	sum = r.Finish(ctx, store.Root{AgentID: id}, actor, reason, rev, start, time.Since(start), wait)
	r.endStopped(killed)
	r.share(Change{Stopped: killed, Approvals: true})
	return killed, sum, nil
}

// KillAll flips the global kill switch: every agent is stopped and every
// credential revoked.
func (r *Revoker) KillAll(ctx context.Context, actor, reason string, wait bool) (*brokerv1.RevocationSummary, error) {
	start := time.Now()
	rev, kerr := r.db(ctx).KillAll(actor, reason)
	gk, err := r.cfg.Store.GlobalKill()
	switch {
	case kerr != nil && (err != nil || gk == nil):
		// The switch did not commit (or cannot be read back): as if
		// nothing changed.
		return nil, fmt.Errorf("kill all: %w", kerr)
	case err != nil:
		return nil, fmt.Errorf("read the kill switch: %w", err)
	}
	r.anchors.DropAll()
	r.cfg.Approvals.Fire()
	r.share(Change{DropAll: true, Approvals: true})
	sum := r.Finish(ctx, store.Root{}, actor, reason, rev, start, time.Since(start), wait && kerr == nil)
	if kerr != nil {
		// The switch holds; what was revoked goes to Vault; the rest waits
		// for another KillAll.
		return nil, fmt.Errorf("kill all: %w", kerr)
	}
	return sum, nil
}

// ReleaseAll releases the global kill switch.
func (r *Revoker) ReleaseAll(ctx context.Context, actor, reason string) error {
	if err := r.db(ctx).ReleaseAll(actor, reason); err != nil {
		return fmt.Errorf("release all: %w", err)
	}
	return nil
}

// Credentials revokes agent's credentials that revoke selects (its own,
// not those of its grants' lineages).
func (r *Revoker) Credentials(ctx context.Context, agent, actor, reason string, revoke func(store.Credential) bool) (*brokerv1.RevocationSummary, error) {
	start := time.Now()
	rev, err := r.db(ctx).RevokeCredentials(agent, actor, reason, revoke)
	if err != nil {
		return nil, fmt.Errorf("revoke credentials: %w", err)
	}
	return r.Finish(ctx, store.Root{}, actor, reason, rev, start, time.Since(start), true), nil
}

// Lineage commits the revocation of root's lineage, then revokes it
// in Vault, tells the affected agents and writes the audit summary.
func (r *Revoker) Lineage(ctx context.Context, root store.Root, actor, reason string) (*brokerv1.RevocationSummary, error) {
	start := time.Now()
	reason = audit.Redact(reason)
	rev, err := r.db(ctx).RevokeLineage(root, actor, reason)
	if err != nil {
		return nil, fmt.Errorf("revoke lineage: %w", err)
	}
	failpoint.Hit(failpoint.RevokeAfterCommit)
	return r.Finish(ctx, root, actor, reason, rev, start, time.Since(start), true), nil
}

// Finish does what follows a committed revocation.
//
// With wait, it waits (briefly) for Vault to confirm; without, it leaves
// Vault to the background revoker and answers at once.
func (r *Revoker) Finish(ctx context.Context, root store.Root, actor, reason string, rev store.Revocation, start time.Time, commit time.Duration, wait bool) *brokerv1.RevocationSummary {
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
	r.anchors.Drop(append(nodes, rev.Nodes...)...)
	if len(rev.Approvals) > 0 {
		r.cfg.Approvals.Fire()
	}
	// Vault is told at once: the broker already refuses everything
	// revoked, whatever Vault is doing.
	ahead, confirmed := r.toVault(ctx, rev.Queued, wait)
	if err := r.cfg.Store.Settle(&rev, ahead); err != nil {
		edge.Logger(ctx).Error("listing the revoked credentials failed; their agents are told of the revocation without them",
			slog.String(edge.LogError, err.Error()))
	}
	for agent, accs := range rev.Credentials {
		ev := event(agent)
		ev.Accessors = append(ev.Accessors, accs...)
		r.cfg.Live.Remove(agent, accs...)
	}
	r.announce(Change{Drop: append(nodes, rev.Nodes...), Approvals: len(rev.Approvals) > 0, Stopped: []string{root.AgentID}}, events)
	// An agent stopped (killed, deregistered) hears what it lost, then its
	// watch ends; Kill ends those of the agents stopped below it.
	r.endStopped([]string{root.AgentID})

	done := confirmed()
	sum := &brokerv1.RevocationSummary{
		GrantsRevoked:      int32(len(rev.Grants)),
		CredentialsRevoked: int32(rev.CredentialCount()),
		VaultConfirmed:     int32(done),
		VaultPending:       int32(len(rev.Queued) - done),
		CommitDuration:     durationpb.New(commit),
		TotalDuration:      durationpb.New(time.Since(start)),
	}
	r.record(ctx, actor, subject, reason, sum)
	return sum
}

// toVault revokes queued in Vault on a goroutine of its own: inline for
// up to inlineRevokeTimeout with wait, and without it only by waking the
// background revoker. It returns ahead, for store.Settle: a listing of
// settleAfterVaultFrom credentials or more (which would take the CPU
// Vault needs to kill them) waits for Vault's answer, at most
// settleAfterVault; a smaller one goes first, so that agents hear it
// without waiting on Vault. confirmed waits for Vault's count.
func (r *Revoker) toVault(ctx context.Context, queued []string, wait bool) (ahead func(n int), confirmed func() int) {
	timeout := inlineRevokeTimeout
	if !wait {
		timeout = 0 // nothing confirmed inline; the revoker is woken
	}
	vault := make(chan int, 1)
	go func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
		defer cancel()
		vault <- r.queue.revoke(rctx, queued)
	}()
	n, told := 0, false
	ahead = func(records int) {
		if records < settleAfterVaultFrom {
			return
		}
		select {
		case n = <-vault:
			told = true
		case <-time.After(settleAfterVault):
		}
	}
	return ahead, func() int {
		if !told {
			n, told = <-vault, true
		}
		return n
	}
}

// record writes the audit summary and the log line of a finished
// revocation.
func (r *Revoker) record(ctx context.Context, actor, subject, reason string, sum *brokerv1.RevocationSummary) {
	commit := sum.CommitDuration.AsDuration()
	log := edge.Logger(ctx)
	// The revocation and its own records are committed already: the
	// caller need not wait for the summary's fsync.
	lost := func() {
		log.Error("the revocation audit summary was lost: the store's commit failed after it was written; this log line holds its counts",
			slog.String("root", subject), slog.Int("grants", int(sum.GrantsRevoked)), slog.Int("credentials", int(sum.CredentialsRevoked)))
	}
	if err := r.db(ctx).AppendSummary(store.AuditRecord{Kind: "lineage_revoked", Actor: actor, Subject: subject, Detail: map[string]string{
		"reason":              reason,
		"grants_revoked":      itoa(sum.GrantsRevoked),
		"credentials_revoked": itoa(sum.CredentialsRevoked),
		"vault_confirmed":     itoa(sum.VaultConfirmed),
		"vault_pending":       itoa(sum.VaultPending),
		"commit_duration":     commit.String(),
		"total_duration":      sum.TotalDuration.AsDuration().String(),
	}}, lost); err != nil {
		log.Error("writing the revocation audit summary failed", slog.String(edge.LogError, err.Error()))
	}
	log.Info("lineage revoked", slog.String("root", subject), slog.Int("grants", int(sum.GrantsRevoked)),
		slog.Int("credentials", int(sum.CredentialsRevoked)), slog.Int("vault_confirmed", int(sum.VaultConfirmed)),
		slog.Int("vault_pending", int(sum.VaultPending)), slog.Duration("commit", commit), slog.Duration(edge.LogDuration, sum.TotalDuration.AsDuration()))
}

func itoa(n int32) string { return strconv.Itoa(int(n)) }

// lostRetries bounds how long Lost keeps trying Vault: about a minute.
const lostRetries = 8

// Lost makes safe a credential the agent received but whose record the
// store then failed to commit (store.Options.OnLost): the store may not
// take a queue entry, so it revokes in Vault at once, with retries, the
// credential's anchor (a batch token dies only with it, and its siblings
// with it) or the credential itself (a service token), and forgets the
// cached anchors so nothing more hangs on a revoked one.
func (r *Revoker) Lost(c store.Credential) {
	if c.Kind == store.KindJWT {
		// No Vault token: introspection, finding no record, says inactive;
		// resource servers that only follow the events hear it revoked.
		r.cfg.Log.Warn("an access token was handed out but its record was not committed; it is announced revoked",
			slog.String(edge.LogAgent, c.AgentID), slog.String("jti", c.Accessor))
		r.announce(Change{}, map[string]*brokerv1.WatchRevocationsResponse{c.AgentID: {
			Reason: "the broker could not record this access token", Time: timestamppb.Now(), Accessors: []string{c.Accessor}}})
		return
	}
	acc := c.Accessor
	if c.Kind == store.KindBatch {
		acc = c.Anchor
	}
	r.anchors.DropAll()
	wait := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		err := r.cfg.Vault.Revoke(context.Background(), acc)
		if err == nil {
			r.cfg.Log.Warn("revoked a credential whose record was lost", slog.String(edge.LogAccessor, acc), slog.String("agent", c.AgentID))
			return
		}
		if attempt == lostRetries {
			r.cfg.Log.Error("a credential whose record was lost could not be revoked; it expires on its own",
				slog.String(edge.LogAccessor, acc), slog.String("agent", c.AgentID), slog.Time("expires_at", c.ExpiresAt), slog.String(edge.LogError, err.Error()))
			return
		}
		time.Sleep(wait)
		wait *= 2
	}
}
