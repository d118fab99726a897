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
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
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
// web client when Secret is set, else a public native one (PKCE); with
// Device, a public client of the device authorization grant (RFC 8628),
// as a command line's (atfctl login), whose ID tokens carry the person's
// profile and groups.
type Client struct {
	ID           string
	Secret       string
	RedirectURIs []string
	Device       bool
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
	devices := map[string]bool{}
	for _, c := range clients {
		if c.Device {
			storage.RegisterClients(storage.DeviceClient(c.ID, ""))
			devices[c.ID] = true
			continue
		}
		if c.Secret != "" {
			storage.RegisterClients(storage.WebClient(c.ID, c.Secret, c.RedirectURIs...))
		} else {
			storage.RegisterClients(storage.NativeClient(c.ID, c.RedirectURIs...))
		}
	}
	registerMu.Unlock()
	us := newUserStore(users)
	st := &groupStorage{Storage: storage.NewStorage(us), users: us, groups: map[string][]string{}, devices: devices,
		deviceCodes: map[string]*op.DeviceAuthorizationState{}, userCodes: map[string]string{}}
	for _, u := range users {
		st.groups[u.ID] = slices.Clone(u.Groups)
	}
	// The example logs every request; its warnings and errors are enough.
	router := exampleop.SetupServer(p.Issuer, st, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})), false)
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
// example storage says of a user, and keeps the device authorizations
// itself (deviceStorage).
type groupStorage struct {
	*storage.Storage
	users   userStore
	groups  map[string][]string
	devices map[string]bool // public device clients

	mu          sync.Mutex
	deviceCodes map[string]*op.DeviceAuthorizationState // by device code
	userCodes   map[string]string                       // user code -> device code
}

// GetClientByClientID answers a device client as a public one (no
// secret, as a command line on people's machines cannot keep one) that
// asserts the profile and groups into its ID tokens: the example has no
// such client.
func (s *groupStorage) GetClientByClientID(ctx context.Context, id string) (op.Client, error) {
	c, err := s.Storage.GetClientByClientID(ctx, id)
	if err != nil || !s.devices[id] {
		return c, err
	}
	return publicDevice{c}, nil
}

type publicDevice struct{ op.Client }

func (publicDevice) ApplicationType() op.ApplicationType  { return op.ApplicationTypeNative }
func (publicDevice) AuthMethod() oidc.AuthMethod          { return oidc.AuthMethodNone }
func (publicDevice) IDTokenUserinfoClaimsAssertion() bool { return true }

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

// The device authorizations are kept here rather than by the example's
// storage, which names the person by their user name instead of their
// subject, records no authentication time, and hands out its entries
// for reading outside its lock.

func (s *groupStorage) StoreDeviceAuthorization(ctx context.Context, clientID, deviceCode, userCode string, expires time.Time, scopes []string) error {
	if !s.devices[clientID] {
		return errors.New("client not found")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.userCodes[userCode]; ok {
		return op.ErrDuplicateUserCode
	}
	s.deviceCodes[deviceCode] = &op.DeviceAuthorizationState{ClientID: clientID, Scopes: slices.Clone(scopes), Expires: expires}
	s.userCodes[userCode] = deviceCode
	return nil
}

func (s *groupStorage) GetDeviceAuthorizatonState(ctx context.Context, clientID, deviceCode string) (*op.DeviceAuthorizationState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.deviceCodes[deviceCode]
	if !ok || st.ClientID != clientID {
		return nil, errors.New("device code not found for client")
	}
	c := *st
	if st.Done || st.Denied {
		// Answered once: the code gives no second token.
		delete(s.deviceCodes, deviceCode)
		for u, d := range s.userCodes {
			if d == deviceCode {
				delete(s.userCodes, u)
			}
		}
	}
	return &c, nil
}

func (s *groupStorage) GetDeviceAuthorizationByUserCode(ctx context.Context, userCode string) (*op.DeviceAuthorizationState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.deviceCodes[s.userCodes[userCode]]
	if !ok {
		return nil, errors.New("user code not found")
	}
	c := *st
	return &c, nil
}

// CompleteDeviceAuthorization is called with the user name the person
// signed in with: the token's subject is their ID, as at any sign-in.
func (s *groupStorage) CompleteDeviceAuthorization(ctx context.Context, userCode, username string) error {
	u := s.users.GetUserByUsername(username)
	if u == nil {
		return errors.New("user not found")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.deviceCodes[s.userCodes[userCode]]
	switch {
	case !ok:
		return errors.New("user code not found")
	case st.Done || st.Denied:
		return errors.New("this code was already answered")
	case time.Now().After(st.Expires):
		return errors.New("this code expired; start the sign-in again")
	}
	st.Subject, st.AuthTime, st.AMR, st.Done = u.ID, time.Now(), []string{"pwd"}, true
	return nil
}

func (s *groupStorage) DenyDeviceAuthorization(ctx context.Context, userCode string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st, ok := s.deviceCodes[s.userCodes[userCode]]; ok {
		st.Denied = true
	}
	return nil
}

// ApproveDevice is what a person does in their browser for a command
// line's device sign-in: open the verification page, enter userCode,
// sign in as username with password and allow the client. For tests
// and the demo, which have no person at hand.
func (p *Provider) ApproveDevice(ctx context.Context, userCode, username, password string) error {
	jar, err := cookiejar.New(nil)
	if err != nil {
		return err
	}
	hc := &http.Client{Jar: jar, Timeout: 10 * time.Second}
	post := func(path string, form url.Values) (string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.Issuer+path, strings.NewReader(form.Encode()))
		if err != nil {
			return "", err
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		return p.page(hc, req)
	}
	if _, err := post("device", url.Values{"user_code": {userCode}}); err != nil {
		return err
	}
	body, err := post("device/login", url.Values{"user_code": {userCode}, "username": {username}, "password": {password}})
	if err != nil {
		return err
	}
	if !strings.Contains(body, "confirm?action=allowed") {
		return fmt.Errorf("oidcop: the device sign-in of %s was refused: %.300s", username, body)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.Issuer+"device/confirm?action=allowed", nil)
	if err != nil {
		return err
	}
	if body, err = p.page(hc, req); err != nil {
		return err
	}
	if !strings.Contains(body, "Device authorization allowed") {
		return fmt.Errorf("oidcop: the device sign-in of %s was not allowed: %.300s", username, body)
	}
	return nil
}

func (p *Provider) page(hc *http.Client, req *http.Request) (string, error) {
	resp, err := hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("oidcop: %s: %w", req.URL.Path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("oidcop: %s: %s %v", req.URL.Path, resp.Status, err)
	}
	return string(b), nil
}
