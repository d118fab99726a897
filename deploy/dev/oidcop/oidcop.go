// Package oidcop is a real OpenID provider for the console's tests and the
// demo: zitadel/oidc's provider (authorization code with PKCE, discovery,
// JWKS, userinfo, device authorization) with its example in-memory storage
// and login page, on loopback, holding a few people with their groups.
// It is a development stand-in for a company's provider (Okta, Entra ID,
// Keycloak, Dex): never for production, passwords are plain text.
package oidcop

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"golang.org/x/text/language"
)

// GroupsScope is the scope that asks for the groups claim.
const GroupsScope = "groups"

// User is a person the provider knows.
type User struct {
	ID       string
	Username string
	Password string
	First    string
	Last     string
	Email    string
	Groups   []string
}

// Client is an OAuth client registered at the provider: a confidential
// web client when Secret is set, else a public native one (PKCE).
type Client struct {
	ID           string
	Secret       string
	RedirectURIs []string
}

// Provider is a running provider.
type Provider struct {
	// Issuer is its issuer URL, http://127.0.0.1:PORT/ (with the slash,
	// as the provider names itself).
	Issuer string
	srv    *http.Server
	ln     net.Listener
}

// The example storage keeps its clients in one map of its package:
// registering is serialised here, and done before serving.
var registerMu sync.Mutex

// Start starts a provider on addr ("127.0.0.1:0" for any free port) for
// users and clients.
func Start(addr string, users []User, clients ...Client) (*Provider, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("oidcop: listen: %w", err)
	}
	p := &Provider{Issuer: "http://" + ln.Addr().String() + "/", ln: ln}
	registerMu.Lock()
	for _, c := range clients {
		if c.Secret != "" {
			storage.RegisterClients(storage.WebClient(c.ID, c.Secret, c.RedirectURIs...))
		} else {
			storage.RegisterClients(storage.NativeClient(c.ID, c.RedirectURIs...))
		}
	}
	registerMu.Unlock()
	st := &groupStorage{Storage: storage.NewStorage(newUserStore(users)), groups: map[string][]string{}}
	for _, u := range users {
		st.groups[u.ID] = slices.Clone(u.Groups)
	}
	router := exampleop.SetupServer(p.Issuer, st, nil, false)
	p.srv = &http.Server{Handler: router, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

// Close stops the provider.
func (p *Provider) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := p.srv.Shutdown(ctx)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// groupStorage adds the groups claim, for the groups scope, to what the
// example storage says of a user.
type groupStorage struct {
	*storage.Storage
	groups map[string][]string
}

func (s *groupStorage) SetUserinfoFromScopes(ctx context.Context, info *oidc.UserInfo, userID, clientID string, scopes []string) error {
	if err := s.Storage.SetUserinfoFromScopes(ctx, info, userID, clientID, scopes); err != nil {
		return err
	}
	s.addGroups(info, userID, scopes)
	return nil
}

func (s *groupStorage) SetUserinfoFromToken(ctx context.Context, info *oidc.UserInfo, tokenID, subject, origin string) error {
	if err := s.Storage.SetUserinfoFromToken(ctx, info, tokenID, subject, origin); err != nil {
		return err
	}
	s.addGroups(info, info.Subject, []string{GroupsScope})
	return nil
}

func (s *groupStorage) addGroups(info *oidc.UserInfo, userID string, scopes []string) {
	if g, ok := s.groups[userID]; ok && slices.Contains(scopes, GroupsScope) {
		info.AppendClaims("groups", g)
	}
}

// userStore is the example storage's UserStore over users.
type userStore struct {
	byID, byName map[string]*storage.User
}

func newUserStore(users []User) userStore {
	s := userStore{byID: map[string]*storage.User{}, byName: map[string]*storage.User{}}
	for _, u := range users {
		su := &storage.User{ID: u.ID, Username: u.Username, Password: u.Password, FirstName: u.First, LastName: u.Last,
			Email: u.Email, EmailVerified: u.Email != "", PreferredLanguage: language.English}
		s.byID[u.ID], s.byName[u.Username] = su, su
	}
	return s
}

func (s userStore) GetUserByID(id string) *storage.User         { return s.byID[id] }
func (s userStore) GetUserByUsername(name string) *storage.User { return s.byName[name] }
func (s userStore) ExampleClientID() string                     { return "" }
