package revoke

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/failpoint"
	"github.com/agentictrust/atf/broker/store"
	"github.com/agentictrust/atf/broker/vault"
)

// queue finishes queued revocations: inline when they are queued, and in
// the background, with jittered backoff, for those Vault did not confirm.
// The queue lives in the store, so a restart resumes it. With a shared
// store, one replica at a time drains it in the background (lead), told
// by the others when they leave something in it (left), and reading it
// every leaderPoll besides.
type queue struct {
	store  *store.Store
	issuer *vault.Issuer
	log    *slog.Logger
	lead   func(ctx context.Context, run func(context.Context))
	// left tells the replica that drains the queue that this one left
	// something in it.
	left func()

	kick   chan struct{}
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newQueue(st *store.Store, is *vault.Issuer, log *slog.Logger, lead func(context.Context, func(context.Context))) *queue {
	return &queue{store: st, issuer: is, log: log, lead: lead, left: func() {}, kick: make(chan struct{}, 1), cancel: func() {}}
}

// leaderPoll is how often the replica leading a shared queue reads it
// even when nobody said it holds anything.
const leaderPoll = 10 * time.Second

// wake wakes the background drain.
func (r *queue) wake() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// revoke revokes creds in Vault and returns how many Vault confirmed; the
// rest stay queued, and the background loop is woken to retry them.
func (r *queue) revoke(ctx context.Context, accessors []string) int {
	done := r.revokeAll(ctx, accessors)
	if done < len(accessors) {
		r.wake()
		r.left()
	}
	return done
}

// revokeAll revokes accessors in order (anchors come first, so most of
// what follows is already dead in Vault and answers at once) and returns
// how many Vault confirmed. It stops early if ctx ends.
func (r *queue) revokeAll(ctx context.Context, accessors []string) int {
	done := 0
	for _, acc := range accessors {
		if ctx.Err() != nil {
			break
		}
		if err := r.issuer.Revoke(ctx, acc); err != nil {
			r.log.Warn("revocation queued for retry", slog.String(edge.LogAccessor, acc), slog.String(edge.LogError, err.Error()))
			continue
		}
		if err := r.store.CompleteRevocation(acc); err != nil {
			// Vault revoked it; the retry will find it gone and succeed.
			r.log.Error("recording a revocation failed", slog.String(edge.LogAccessor, acc), slog.String(edge.LogError, err.Error()))
			continue
		}
		done++
		failpoint.Hit(failpoint.RevokeMidLineage)
	}
	return done
}

func (r *queue) start() {
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		if r.lead == nil {
			r.loop(ctx)
			return
		}
		r.lead(ctx, r.loop)
	}()
}

func (r *queue) stop() {
	r.cancel()
	r.wg.Wait()
}

// loop drains the queue at start, then whenever kicked, retrying with
// backoff (1 s doubling to 1 min) while anything is left.
func (r *queue) loop(ctx context.Context) {
	backoff := time.Second
	for {
		pending, err := r.store.PendingRevocations()
		if err != nil {
			r.log.Error("reading the revocation queue failed", slog.String(edge.LogError, err.Error()))
		}
		if len(pending) > 0 {
			rctx, cancel := context.WithTimeout(ctx, time.Minute)
			n := r.revokeAll(rctx, pending)
			cancel()
			r.log.Info("revocation queue drained", slog.Int(edge.LogCount, n), slog.Int("pending", len(pending)-n))
			if n == len(pending) {
				backoff = time.Second
				continue
			}
		}
		var wait <-chan time.Time
		switch {
		case len(pending) > 0 || err != nil:
			wait = time.After(backoff/2 + rand.N(backoff))
			backoff = min(2*backoff, time.Minute)
		case r.lead != nil:
			wait = time.After(leaderPoll)
		}
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
		case <-wait:
		}
	}
}
