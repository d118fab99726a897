package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/agentictrust/atf/attest"
	"github.com/agentictrust/atf/broker/accesstoken"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/edge"
	"github.com/agentictrust/atf/broker/oauthapi"
	"github.com/agentictrust/atf/broker/revoke"
	"github.com/agentictrust/atf/broker/store"
)

// checkOAuthRoles refuses a roles file with roles of kind jwt when the
// OAuth endpoints are off: nobody could be issued them.
func (s *Server) checkOAuthRoles() error {
	if s.cfg.OAuth.Enabled() {
		return nil
	}
	for _, r := range s.roles {
		if r.Kind == config.KindJWT {
			return fmt.Errorf("broker: role %s is of kind jwt (OAuth access tokens) and oauth.listen_addr is not set: turn the OAuth endpoints on (docs/oauth.md) or remove the role", r.Name)
		}
	}
	return nil
}

// openTokens reads the transit key that signs access tokens, if the OAuth
// endpoints are on.
func (s *Server) openTokens(ctx context.Context) (err error) {
	o := s.cfg.OAuth
	if !o.Enabled() {
		return nil
	}
	var overlap time.Duration
	for _, r := range s.roles {
		if r.Kind == config.KindJWT {
			overlap = max(overlap, r.MaxTTL)
		}
	}
	s.tokens, err = accesstoken.New(ctx, accesstoken.Config{Transit: s.vault, Mount: o.TransitMount, Key: o.Key, Issuer: o.Issuer,
		Overlap: overlap, Now: s.now})
	return err
}

// openOAuth builds the OAuth endpoints on their own listener, served with
// the broker's X.509-SVID.
func (s *Server) openOAuth(exchanger oauthapi.Exchanger) error {
	o := s.cfg.OAuth
	if !o.Enabled() {
		return nil
	}
	jwtVerifier, err := attest.New(attest.Config{TrustDomains: s.trustDomains, JWTBundles: s.source, X509Bundles: s.source, Audience: o.Issuer, Now: s.now})
	if err != nil {
		return err
	}
	h := oauthapi.New(oauthapi.Config{Issuer: o.Issuer, Roles: s.roles, X509: s.verifier, JWT: jwtVerifier,
		ResourceServers: idSet(o.ResourceServers), Exchanger: exchanger, Tokens: s.tokens, Store: s.store,
		Revoker: oauthRevoker{s.revoker}, Log: s.log, Now: s.now, Closing: s.closingCh})
	tlsCfg := s.verifier.ServerTLSConfig(s.source)
	tlsCfg.NextProtos = []string{"h2", "http/1.1"}
	// No read timeout: it would cut the event streams; each form sets its
	// own deadline (oauthapi).
	s.oauth, err = s.listen("OAuth endpoints", "oauth.listen_addr", o.ListenAddr, tlsCfg, h, 0)
	return err
}

// OAuthAddr is the address the OAuth endpoints listen on ("" if off).
func (s *Server) OAuthAddr() string { return s.oauth.addr() }

// serveOAuth serves the OAuth endpoints and keeps the signing key
// rotated and its published versions fresh, until ctx ends.
func (s *Server) serveOAuth(ctx context.Context) {
	if s.oauth == nil {
		return
	}
	s.serve(s.oauth)
	s.loops.Go(func() {
		s.rotateKey(ctx)
		every(ctx, keyCheckEvery, func() { s.rotateKey(ctx) })
	})
}

// keyCheckEvery is how often the signing key's age and versions are read.
const keyCheckEvery = time.Minute

// rotateKey rotates the signing key if it is due, and refreshes its
// published versions.
func (s *Server) rotateKey(ctx context.Context) {
	rotated, err := s.tokens.RotateIfDue(ctx, s.cfg.OAuth.RotateEvery)
	if err != nil {
		s.log.Error("checking the access tokens' signing key failed; tokens are signed with the key version last read", slog.String(edge.LogError, err.Error()))
		return
	}
	if rotated {
		s.log.Info("rotated the access tokens' signing key", slog.String("key", s.cfg.OAuth.Key))
	}
}

// RotateSigningKey rotates the access tokens' signing key now, outside its
// schedule (oauth.rotate_every): after a suspected compromise, or in a
// test. Tokens signed before stay valid while their key version is
// published (docs/oauth.md, rotation).
func (s *Server) RotateSigningKey(ctx context.Context) error {
	if s.tokens == nil {
		return errors.New("broker: the OAuth endpoints are off")
	}
	return s.tokens.Rotate(ctx)
}

// oauthRevoker is the revoker as the OAuth endpoints use it.
type oauthRevoker struct{ *revoke.Revoker }

// Events watches every agent's revocations, as resource servers hear
// them: an event's accessors are jtis (an access token's accessor is its
// jti; the others match none), its grants lineage nodes. It resumes after
// resumeAfter if it can (revoke.Revoker.SubscribeAll).
func (o oauthRevoker) Events(ctx context.Context, resumeAfter string) (<-chan oauthapi.Event, bool, func()) {
	in, resumed, cancel := o.SubscribeAll(ctx, resumeAfter)
	out := make(chan oauthapi.Event, 16)
	done := make(chan struct{})
	go func() {
		defer close(out)
		for ev := range in {
			if ev.Msg == nil {
				select {
				case out <- oauthapi.Event{Mark: true, Cursor: ev.Cursor}:
					continue
				case <-done:
					return
				}
			}
			e := oauthapi.Event{JTIs: slices.Clone(ev.Msg.GetAccessors()), Nodes: []string{}, Agents: []string{}, Reason: ev.Msg.GetReason(),
				Time: ev.Msg.GetTime().AsTime(), Cursor: ev.Cursor}
			if e.JTIs == nil {
				e.JTIs = []string{}
			}
			for _, g := range ev.Msg.GetGrantIds() {
				e.Nodes = append(e.Nodes, store.GrantNode(g))
			}
			select {
			case out <- e:
			case <-done:
				return
			}
		}
	}()
	return out, resumed, func() {
		cancel()
		close(done)
	}
}
