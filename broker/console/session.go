package console

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// Cookies. The __Host- prefix makes the browser refuse them unless they
// are Secure, for the whole host and set by it (no Domain): no sibling
// domain can plant or read them.
const (
	sessionCookie = "__Host-atf_session"
	loginCookie   = "__Host-atf_login"
)

// session is what a signed-in person's cookie holds, sealed (AES-GCM):
// nobody can read or change it without the key. It holds no token of the
// provider's: the console has no use for them once the ID token is
// verified.
type session struct {
	ID       string    `json:"id"`
	Issuer   string    `json:"iss"`
	Subject  string    `json:"sub"`
	Name     string    `json:"name"`
	Email    string    `json:"email,omitempty"`
	Roles    []string  `json:"roles"`
	AuthTime time.Time `json:"auth_time"`
	Expires  time.Time `json:"exp"`
	// CSRF is the token every form of this session carries back.
	CSRF string `json:"csrf"`
}

// loginState is what the browser carries through the provider's sign-in:
// the state and nonce it must come back with, the PKCE verifier, where to
// go after, and whether a fresh authentication was asked for.
type loginState struct {
	State    string    `json:"state"`
	Nonce    string    `json:"nonce"`
	Verifier string    `json:"verifier"`
	Next     string    `json:"next"`
	Reauth   bool      `json:"reauth"`
	Started  time.Time `json:"started"`
	Expires  time.Time `json:"exp"`
}

// sealer seals and opens cookie values.
type sealer struct{ aead cipher.AEAD }

// newSealer reads a hex key of 32 bytes from file, or makes one for this
// process if file is "".
func newSealer(file string) (*sealer, error) {
	key := make([]byte, 32)
	if file == "" {
		_, _ = rand.Read(key)
	} else {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("console: session key: %w", err)
		}
		if key, err = hex.DecodeString(strings.TrimSpace(string(b))); err != nil || len(key) != 32 {
			return nil, fmt.Errorf("console: session key file %s must hold 32 random bytes in hex (openssl rand -hex 32)", file)
		}
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: aead}, nil
}

// seal encodes v under name (the cookie's name is bound in, so that one
// cookie's value is never accepted as another's).
func (s *sealer) seal(name string, v any) (string, error) {
	plain, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, s.aead.NonceSize())
	_, _ = rand.Read(nonce)
	return base64.RawURLEncoding.EncodeToString(s.aead.Seal(nonce, nonce, plain, []byte(name))), nil
}

var errBadCookie = errors.New("console: cookie not sealed by this console")

func (s *sealer) open(name, value string, v any) error {
	raw, err := base64.RawURLEncoding.DecodeString(value)
	if err != nil || len(raw) < s.aead.NonceSize() {
		return errBadCookie
	}
	n := s.aead.NonceSize()
	plain, err := s.aead.Open(nil, raw[:n], raw[n:], []byte(name))
	if err != nil {
		return errBadCookie
	}
	return json.Unmarshal(plain, v)
}

// setCookie sets a sealed cookie: HttpOnly, Secure, SameSite as given,
// for the whole host, expiring with the value inside.
func (c *Console) setCookie(w http.ResponseWriter, name string, v any, exp time.Time, same http.SameSite) error {
	val, err := c.sealer.seal(name, v)
	if err != nil {
		return err
	}
	http.SetCookie(w, &http.Cookie{Name: name, Value: val, Path: "/", Expires: exp, MaxAge: int(exp.Sub(c.cfg.Now()).Seconds()) + 1,
		HttpOnly: true, Secure: true, SameSite: same})
	return nil
}

func clearCookie(w http.ResponseWriter, name string, same http.SameSite) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: true, SameSite: same})
}

// randomToken is 32 random bytes, base64url.
func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// session is the request's signed-in person, or nil: no cookie, one this
// console did not seal, expired, or signed out. An error says whether it
// was signed out could not be read (the store is down): nobody is then
// signed in.
func (c *Console) session(r *http.Request) (*session, error) {
	ck, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil, nil
	}
	var s session
	if c.sealer.open(sessionCookie, ck.Value, &s) != nil || !c.cfg.Now().Before(s.Expires) {
		return nil, nil
	}
	ended, err := c.ended.has(s.ID)
	if err != nil || ended {
		return nil, err
	}
	return &s, nil
}

// csrfOK says whether a state-changing request comes from this session's
// own page: the form's token matches the session's, and the browser does
// not say it came from another site.
func (c *Console) csrfOK(r *http.Request, s *session) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return false
	}
	if o := r.Header.Get("Origin"); o != "" && o != c.origin {
		return false
	}
	got := r.PostFormValue("csrf")
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(s.CSRF)) == 1
}

// Sessions records the sessions people signed out of, for every
// replica (*store.Store).
type Sessions interface {
	EndSession(id string, expires time.Time) error
	SessionEnded(id string) (bool, error)
}

// endedSessions are the sessions signed out before their expiry, kept
// until then: a sealed cookie copied before sign-out is refused too, on
// every replica when shared is set (the store), else on this one.
type endedSessions struct {
	shared Sessions
	mu     sync.Mutex
	ids    map[string]time.Time
	now    func() time.Time
}

func (e *endedSessions) add(id string, exp time.Time) error {
	e.mu.Lock()
	now := e.now()
	for k, t := range e.ids {
		if now.After(t) {
			delete(e.ids, k)
		}
	}
	e.ids[id] = exp
	e.mu.Unlock()
	if e.shared != nil {
		return e.shared.EndSession(id, exp)
	}
	return nil
}

func (e *endedSessions) has(id string) (bool, error) {
	e.mu.Lock()
	_, ok := e.ids[id]
	e.mu.Unlock()
	if ok || e.shared == nil {
		return ok, nil
	}
	return e.shared.SessionEnded(id)
}
