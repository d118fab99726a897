// Package policy holds the segmentation policy in force: the newest
// version in the store, loaded once and swapped atomically when an admin
// sets or rolls back a version, so that every decision reads one snapshot.
package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"

	"github.com/agentictrust/atf/authz"
	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/store"
)

// Notifier tells people what happened.
type Notifier interface {
	Notify(ctx context.Context, kind, agent, role, summary string, detail map[string]string)
}

// Holder holds the policy in force.
type Holder struct {
	// OnCommit, if set, is called after a new version is in force here
	// (the composition root tells the other replicas, which Reload).
	OnCommit func()
	store    *store.Store
	notifier Notifier
	log      *slog.Logger
	cur      atomic.Pointer[authz.Policy]
	mu       sync.Mutex // serialises updates
}

// Load makes the store's current policy the one in force, seeding the
// store from cfg's files if it holds none.
func Load(st *store.Store, cfg config.PolicyConfig, n Notifier, log *slog.Logger) (*Holder, error) {
	h := &Holder{store: st, notifier: n, log: log}
	return h, h.load(cfg)
}

// Current is the policy in force (nil: none yet, and every request is
// denied).
func (h *Holder) Current() *authz.Policy { return h.cur.Load() }

// load makes the store's current policy the one in force, seeding
// the store from the configured files if it holds none. A stored policy
// that no longer loads (a broker downgrade, a hand-edited file) stops the
// start: serving with a guessed policy is worse than not serving.
func (h *Holder) load(cfg config.PolicyConfig) error {
	pv, err := h.store.Policy(0)
	switch {
	case errors.Is(err, store.ErrNotFound) && cfg.ModelFile == "":
		h.log.Warn("no segmentation policy is stored or configured: every credential request will be denied until an admin sets one (atfctl policy set)")
		return nil
	case errors.Is(err, store.ErrNotFound):
		model, policy, err := readPolicyFiles(cfg)
		if err != nil {
			return err
		}
		p, err := authz.NewPolicy(0, model, policy)
		if err != nil {
			return fmt.Errorf("policy: files %s, %s: %w", cfg.ModelFile, cfg.PolicyFile, err)
		}
		if pv, err = h.store.PutPolicy(store.PolicyVersion{Author: "atfd", Comment: "seeded from " + cfg.PolicyFile,
			Model: model, Policy: policy, Digest: p.Digest(), Lines: p.Lines()}, 0); err != nil {
			return err
		}
		h.log.Info("segmentation policy seeded from files", slog.Uint64("version", pv.Version), slog.Int("lines", p.Lines()))
	case err != nil:
		return err
	}
	p, err := authz.NewPolicy(pv.Version, pv.Model, pv.Policy)
	if err != nil {
		return fmt.Errorf("policy: stored policy version %d does not load (roll back with an older atfd, or restore a backup): %w", pv.Version, err)
	}
	for _, w := range p.Warnings() {
		h.log.Warn("policy lint", slog.String("warning", w))
	}
	if cfg.ModelFile != "" {
		if model, policy, err := readPolicyFiles(cfg); err == nil && (model != pv.Model || policy != pv.Policy) {
			h.log.Warn("the configured policy files differ from the stored policy, which stays in force; use atfctl policy set to change it",
				slog.Uint64("version", pv.Version))
		}
	}
	h.cur.Store(p)
	return nil
}

func readPolicyFiles(cfg config.PolicyConfig) (model, policy string, err error) {
	m, err := os.ReadFile(cfg.ModelFile)
	if err != nil {
		return "", "", fmt.Errorf("policy: %w", err)
	}
	p, err := os.ReadFile(cfg.PolicyFile)
	if err != nil {
		return "", "", fmt.Errorf("policy: %w", err)
	}
	return string(m), string(p), nil
}

// Commit stores a checked policy as the newest version and puts it in
// force, revoking in the same store transaction what judge says it no
// longer allows (store.CommitPolicy); the caller finishes the returned
// revocation (Vault, watching agents). Updates are serialised so the
// policy in force is always the newest stored one.
func (h *Holder) Commit(ctx context.Context, pv store.PolicyVersion, p *authz.Policy, expected uint64, judge store.PolicyJudge) (store.PolicyVersion, store.Revocation, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	pv.Author = edge.Caller(ctx)
	pv.Comment = audit.Redact(pv.Comment)
	pv.Digest, pv.Lines = p.Digest(), p.Lines()
	pv, rev, err := h.store.ForRequest(edge.RequestIDs(ctx)).CommitPolicy(pv, expected, judge)
	if err != nil {
		return pv, rev, fmt.Errorf("store policy: %w", err)
	}
	// The version number is known only now; the loaded rules are the same.
	p, err = authz.NewPolicy(pv.Version, pv.Model, pv.Policy)
	if err != nil {
		return pv, rev, fmt.Errorf("load stored policy: %w", err)
	}
	h.cur.Store(p)
	if h.OnCommit != nil {
		h.OnCommit()
	}
	edge.Logger(ctx).Info("segmentation policy updated", slog.Uint64("version", pv.Version), slog.Int("lines", pv.Lines),
		slog.Uint64("restored", pv.RolledBackFrom), slog.Int("grants_revoked", len(rev.Grants)), slog.Int("credentials_revoked", rev.CredentialCount()))
	h.notifier.Notify(ctx, "policy_updated", "", "", fmt.Sprintf("segmentation policy version %d set by %s: %s", pv.Version, pv.Author, pv.Comment),
		map[string]string{"version": fmt.Sprint(pv.Version), "digest": pv.Digest,
			"grants_revoked": fmt.Sprint(len(rev.Grants)), "credentials_revoked": fmt.Sprint(rev.CredentialCount())})
	return pv, rev, nil
}

// Reload puts in force the store's current version if it is newer than the
// one in force: another replica committed it.
func (h *Holder) Reload() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	pv, err := h.store.Policy(0)
	if err != nil {
		return err
	}
	if cur := h.cur.Load(); cur != nil && cur.Version() >= pv.Version {
		return nil
	}
	p, err := authz.NewPolicy(pv.Version, pv.Model, pv.Policy)
	if err != nil {
		return fmt.Errorf("policy: version %d from another replica does not load: %w", pv.Version, err)
	}
	h.cur.Store(p)
	h.log.Info("segmentation policy updated by another replica", slog.Uint64("version", pv.Version))
	return nil
}
