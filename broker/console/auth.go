package console

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/agentictrust/atf/attest"
	"github.com/agentictrust/atf/broker/edge"
)

// loginTTL bounds a sign-in at the provider.
const loginTTL = 10 * time.Minute

// provider is the OpenID provider and the console's client there.
func (c *Console) provider(ctx context.Context) (*oidc.Provider, *oauth2.Config, error) {
	p, err := c.people.provider(ctx)
	if err != nil {
		return nil, nil, err
	}
	return p, &oauth2.Config{ClientID: c.cfg.OIDC.ClientID, ClientSecret: c.cfg.ClientSecret, Endpoint: p.Endpoint(),
		RedirectURL: c.cfg.URL + "/auth/callback", Scopes: append([]string{oidc.ScopeOpenID}, c.cfg.OIDC.Scopes...)}, nil
}

// login sends the browser to the provider: authorization code with PKCE,
// state and nonce bound to a sealed cookie. ?reauth=1 asks the provider to
// authenticate the person again (max_age=0, prompt=login), for a
// dangerous act.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	_, oc, err := c.provider(r.Context())
	if err != nil {
		c.log.Error("the OpenID provider cannot be reached", slog.String(edge.LogError, err.Error()))
		c.fail(w, r, http.StatusServiceUnavailable, "The OpenID provider (console.oidc.issuer) cannot be reached; nobody can sign in until it answers.")
		return
	}
	now := c.cfg.Now()
	st := loginState{State: randomToken(), Nonce: randomToken(), Verifier: oauth2.GenerateVerifier(), Next: localPath(r.URL.Query().Get("next")),
		Reauth: r.URL.Query().Get("reauth") == "1", Started: now, Expires: now.Add(loginTTL)}
	// Lax: the cookie must come back on the provider's redirect, a
	// top-level navigation from another site.
	if err := c.setCookie(w, loginCookie, st, st.Expires, http.SameSiteLaxMode); err != nil {
		c.fail(w, r, http.StatusInternalServerError, "Could not start the sign-in.")
		return
	}
	opts := []oauth2.AuthCodeOption{oidc.Nonce(st.Nonce), oauth2.S256ChallengeOption(st.Verifier)}
	if st.Reauth {
		opts = append(opts, oauth2.SetAuthURLParam("max_age", "0"), oauth2.SetAuthURLParam("prompt", "login"))
	}
	http.Redirect(w, r, oc.AuthCodeURL(st.State, opts...), http.StatusFound)
}

// callback finishes a sign-in: the code is exchanged (with the PKCE
// verifier), the ID token verified (issuer, audience, expiry, signature,
// nonce; auth_time for a re-authentication), the roles mapped, and the
// session cookie set.
func (c *Console) callback(w http.ResponseWriter, r *http.Request) {
	var st loginState
	ck, err := r.Cookie(loginCookie)
	if err != nil || c.sealer.open(loginCookie, ck.Value, &st) != nil || !c.cfg.Now().Before(st.Expires) {
		c.fail(w, r, http.StatusBadRequest, "This sign-in was not started here or took too long; sign in again.")
		return
	}
	clearCookie(w, loginCookie, http.SameSiteLaxMode)
	q := r.URL.Query()
	if e := q.Get("error"); e != "" {
		c.fail(w, r, http.StatusForbidden, "The OpenID provider refused the sign-in: "+e)
		return
	}
	if q.Get("state") == "" || q.Get("state") != st.State {
		c.fail(w, r, http.StatusBadRequest, "The sign-in's state does not match; sign in again.")
		return
	}
	h, err := c.verify(r.Context(), q.Get("code"), st)
	if err != nil {
		c.log.Warn("console sign-in refused", slog.String(edge.LogError, err.Error()))
		c.fail(w, r, http.StatusForbidden, "Sign-in refused: "+err.Error())
		return
	}
	if len(h.Roles) == 0 {
		c.log.Warn("console sign-in refused: no role", slog.String(edge.LogCaller, h.Principal()))
		c.fail(w, r, http.StatusForbidden, fmt.Sprintf("%s (%s) holds no console role: none of their %s maps to one in atfd's configuration (console.roles).",
			h.Name, h.Principal(), c.cfg.RolesClaim))
		return
	}
	now := c.cfg.Now()
	s := session{ID: randomToken(), Issuer: h.Issuer, Subject: h.Subject, Name: h.Name, Email: h.Email, Roles: h.Roles,
		AuthTime: h.AuthTime, Expires: now.Add(c.cfg.SessionTTL), CSRF: randomToken()}
	if err := c.setCookie(w, sessionCookie, s, s.Expires, http.SameSiteStrictMode); err != nil {
		c.fail(w, r, http.StatusInternalServerError, "Could not start the session.")
		return
	}
	c.log.Info("console sign-in", slog.String(edge.LogCaller, h.Principal()), slog.String("name", h.Name), slog.Any("roles", h.Roles))
	// A page of ours moves on: the Strict session cookie is not sent on
	// the rest of the provider's cross-site redirect chain.
	c.render(w, r, nil, "continue", map[string]any{"Next": st.Next})
}

// verify exchanges code and verifies the ID token, returning the person.
func (c *Console) verify(ctx context.Context, code string, st loginState) (*attest.Human, error) {
	p, oc, err := c.provider(ctx)
	if err != nil {
		return nil, fmt.Errorf("the OpenID provider cannot be reached: %w", err)
	}
	ctx, cancel := context.WithTimeout(oidc.ClientContext(ctx, c.cfg.HTTPClient), 10*time.Second)
	defer cancel()
	tok, err := oc.Exchange(ctx, code, oauth2.VerifierOption(st.Verifier))
	if err != nil {
		return nil, errors.New("the provider did not accept the authorization code")
	}
	raw, ok := tok.Extra("id_token").(string)
	if !ok {
		return nil, errors.New("the provider sent no ID token")
	}
	idt, err := p.Verifier(&oidc.Config{ClientID: c.cfg.OIDC.ClientID, Now: c.cfg.Now}).Verify(ctx, raw)
	if err != nil {
		return nil, fmt.Errorf("the ID token is not valid: %w", err)
	}
	if idt.Nonce != st.Nonce {
		return nil, errors.New("the ID token's nonce does not match this sign-in")
	}
	claims := map[string]any{}
	if err := idt.Claims(&claims); err != nil {
		return nil, fmt.Errorf("the ID token's claims: %w", err)
	}
	age, known := authAge(idt, claims)
	if st.Reauth {
		if err := freshSignIn(age, known); err != nil {
			return nil, err
		}
	}
	// Userinfo completes what the ID token leaves out (name, groups), for
	// the same subject only.
	if info, err := p.UserInfo(ctx, oauth2.StaticTokenSource(tok)); err == nil && info.Subject == idt.Subject {
		more := map[string]any{}
		if info.Claims(&more) == nil {
			for k, v := range more {
				if _, ok := claims[k]; !ok {
					claims[k] = v
				}
			}
		}
	}
	h := c.people.human(idt, claims)
	h.AuthTime = c.cfg.Now().Add(-age) // by atfd's clock: sessions are judged on it
	return h, nil
}

// freshSignIn refuses a re-authentication the provider did not do: the
// person authenticated age before the token, by the provider's clock;
// known says whether the token said when (auth_time).
func freshSignIn(age time.Duration, known bool) error {
	switch {
	case !known:
		return errors.New("the provider did not say when the person authenticated (no auth_time), so a fresh sign-in cannot be proven")
	case age > time.Minute:
		return fmt.Errorf("the provider did not authenticate the person again: they authenticated %s before the token", age.Round(time.Second))
	}
	return nil
}

// logout ends the session (POST, with its CSRF token).
func (c *Console) logout(w http.ResponseWriter, r *http.Request, s *session) {
	if err := c.ended.add(s.ID, s.Expires); err != nil {
		c.log.Error("console sign-out not recorded for the other replicas", slog.String(edge.LogError, err.Error()))
		c.failAs(w, r, s, http.StatusServiceUnavailable, "Your sign-out could not be recorded for every replica of the broker (its store does not answer); "+
			"this replica has ended your session, but sign out again shortly.")
		return
	}
	clearCookie(w, sessionCookie, http.SameSiteStrictMode)
	c.log.Info("console sign-out", slog.String(edge.LogCaller, (&attest.Human{Issuer: s.Issuer, Subject: s.Subject}).Principal()))
	c.render(w, r, nil, "signedout", nil)
}

// localPath is p if it is a path of this console, else "/": a sign-in
// never sends the browser elsewhere.
func localPath(p string) string {
	u, err := url.Parse(p)
	if err != nil || p == "" || u.IsAbs() || u.Host != "" || !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//") || strings.Contains(p, "\\") {
		return "/"
	}
	return p
}
