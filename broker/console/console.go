// Package console is atfd's web console for people: approvers, security
// operators, admins and auditors sign in through OpenID Connect and
// approve, watch and stop agents (docs/console.md).
//
// The console is an edge like the gRPC one: it authenticates the person
// (a sealed session cookie from a verified ID token), authorises every
// page and act by the person's roles on the server, checks each form's
// CSRF token, then calls the same services the gRPC API serves, in
// process, with the person as the verified caller (attest.Human), so that
// every rule of those services (duties kept apart, owners never approving
// their own agents, the audit trail) holds for people as for workloads.
// Pages are rendered on the server from embedded templates; the little
// JavaScript there is (live events) is a file of its own, so that the
// Content-Security-Policy allows no inline script or style.
package console

import (
	"context"
	"embed"
	"errors"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"buf.build/go/protovalidate"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/agentictrust/atf/attest"
	"github.com/agentictrust/atf/broker/config"
	"github.com/agentictrust/atf/broker/edge"
	adminv1 "github.com/agentictrust/atf/proto/atf/admin/v1"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Config is what the console needs.
type Config struct {
	config.ConsoleConfig
	// ClientSecret is the console's secret at the provider ("" for a
	// public client).
	ClientSecret string
	// The services the console acts through (the gRPC API's own).
	Admin     adminv1.AdminServiceServer
	Maturity  adminv1.MaturityServiceServer
	Response  adminv1.ResponseServiceServer
	Approvals adminv1.ApprovalServiceServer
	// People is the provider, shared with the gRPC edge; default one of
	// the console's own.
	People *People
	// Sessions keeps sign-outs for every replica; nil keeps them in this
	// process only.
	Sessions Sessions
	// HTTPClient reaches the provider; default http.DefaultClient.
	HTTPClient *http.Client
	Log        *slog.Logger
	Now        func() time.Time
}

// Console is the console's HTTP handler.
type Console struct {
	cfg       Config
	log       *slog.Logger
	origin    string
	sealer    *sealer
	validator protovalidate.Validator
	pages     map[string]*template.Template
	mux       *http.ServeMux
	ended     *endedSessions
	chain     chainCheck
	people    *People
}

// New builds the console.
func New(cfg Config) (*Console, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = http.DefaultClient
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, err
	}
	sl, err := newSealer(cfg.SessionKeyFile)
	if err != nil {
		return nil, err
	}
	v, err := protovalidate.New()
	if err != nil {
		return nil, err
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	if cfg.People == nil {
		cfg.People = NewPeople(cfg.ConsoleConfig, cfg.HTTPClient, cfg.Now)
	}
	c := &Console{cfg: cfg, people: cfg.People, log: cfg.Log.With(slog.String("component", "console")), origin: u.Scheme + "://" + u.Host, sealer: sl,
		validator: v, pages: pages, mux: http.NewServeMux(), ended: &endedSessions{shared: cfg.Sessions, ids: map[string]time.Time{}, now: cfg.Now}}
	c.routes()
	return c, nil
}

// An act is what a route does for a signed-in person: who may, whether it
// needs a fresh authentication, and the handler.
type act struct {
	roles  []string // any of them; nil: every role
	reauth bool
	fn     func(ctx context.Context, w http.ResponseWriter, r *http.Request, s *session)
}

// Who may act (docs/console.md, Who may do what): the roles of the gRPC
// method each act calls, as people on the command line may call it
// (edge.PeopleRoles): one table for both.
var (
	approvers  = rolesOf(adminv1.ApprovalService_DecideApproval_FullMethodName)
	responders = rolesOf(adminv1.ResponseService_Kill_FullMethodName)
	revokers   = rolesOf(adminv1.AdminService_RevokeLineage_FullMethodName)
	operators  = rolesOf(adminv1.ResponseService_Release_FullMethodName)
	signers    = rolesOf(adminv1.MaturityService_RecordSignOff_FullMethodName)
	adminsOnly = rolesOf(adminv1.AdminService_SetPolicy_FullMethodName)
)

// rolesOf is edge.PeopleRoles(method), which an act needs to name: an
// act's nil roles would open it to every role.
func rolesOf(method string) []string {
	roles := edge.PeopleRoles(method)
	if len(roles) == 0 {
		panic("console: no person may call " + method + ", so no act of the console may")
	}
	return roles
}

func (c *Console) routes() {
	static, _ := fs.Sub(staticFS, "static")
	c.mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	c.mux.HandleFunc("GET /login", c.login)
	c.mux.HandleFunc("GET /auth/callback", c.callback)
	c.mux.HandleFunc("GET /signed-out", func(w http.ResponseWriter, r *http.Request) { c.render(w, r, nil, "signedout", nil) })
	c.handle("POST /logout", act{fn: func(_ context.Context, w http.ResponseWriter, r *http.Request, s *session) { c.logout(w, r, s) }})

	c.handle("GET /{$}", act{fn: c.agentsPage})
	c.handle("GET /agent", act{fn: c.agentPage})
	c.handle("POST /signoff", act{roles: signers, fn: c.signOff})
	c.handle("GET /lineage", act{fn: c.lineagePage})
	c.handle("GET /revoke", act{roles: revokers, fn: c.revokeConfirm})
	c.handle("POST /revoke", act{roles: revokers, fn: c.revoke})
	c.handle("GET /approvals", act{fn: c.approvalsPage})
	c.handle("POST /approvals/decide", act{roles: approvers, fn: c.decide})
	c.handle("GET /kill", act{fn: c.killPage})
	c.handle("GET /kill/confirm", act{roles: responders, fn: c.killConfirm})
	c.handle("POST /kill", act{roles: responders, fn: c.kill})
	c.handle("POST /kill/all", act{roles: responders, reauth: true, fn: c.killAll})
	c.handle("POST /release", act{roles: operators, fn: c.release})
	c.handle("POST /release/all", act{roles: operators, reauth: true, fn: c.releaseAll})
	c.handle("GET /audit", act{fn: c.auditPage})
	c.handle("GET /policy", act{fn: c.policyPage})
	c.handle("POST /policy/test", act{roles: adminsOnly, fn: c.policyTest})
	c.handle("POST /policy/rollback", act{roles: adminsOnly, reauth: true, fn: c.policyRollback})
	c.handle("POST /policy", act{roles: adminsOnly, reauth: true, fn: c.policySet})
	c.handle("GET /events", act{fn: c.eventsPage})
	c.handle("GET /events/stream", act{fn: c.eventsStream})
}

// handle registers a route behind authentication, authorisation, CSRF
// and re-authentication.
func (c *Console) handle(pattern string, a act) {
	c.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		s, err := c.session(r)
		if err != nil {
			c.log.Error("console: whether a session was signed out cannot be read", slog.String(edge.LogError, err.Error()))
			c.failAs(w, r, nil, http.StatusServiceUnavailable, "The broker cannot check your session right now (its store does not answer); try again shortly.")
			return
		}
		if s == nil {
			if r.Method == http.MethodGet {
				http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusFound)
				return
			}
			c.fail(w, r, http.StatusUnauthorized, "You are not signed in (or your session expired); sign in and try again.")
			return
		}
		ctx := c.context(r, s)
		if a.roles != nil && !s.can(a.roles) {
			edge.Logger(ctx).Warn("console act refused: role", slog.Any("roles", s.Roles))
			c.failAs(w, r, s, http.StatusForbidden, "This needs the role "+strings.Join(a.roles, " or ")+"; you hold "+strings.Join(s.Roles, ", ")+".")
			return
		}
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, maxForm)
			if !c.csrfOK(r, s) {
				edge.Logger(ctx).Warn("console act refused: CSRF check")
				c.failAs(w, r, s, http.StatusForbidden, "This form did not come from your console session (its CSRF token is missing or wrong); reload the page and try again.")
				return
			}
			if a.reauth && c.cfg.Now().Sub(s.AuthTime) > c.cfg.ReauthAfter {
				w.WriteHeader(http.StatusForbidden)
				c.render(w, r, s, "reauth", map[string]any{"Next": c.samePage(r.Referer()), "After": c.cfg.ReauthAfter})
				return
			}
		}
		a.fn(ctx, w, r, s)
	})
}

// maxForm bounds a form (a policy is the largest).
const maxForm = 4 << 20

// context is the request's context with the person as the verified
// caller, as the gRPC edge sets it for a workload.
func (c *Console) context(r *http.Request, s *session) context.Context {
	h := &attest.Human{Issuer: s.Issuer, Subject: s.Subject, Name: s.Name, Email: s.Email, Roles: s.Roles, AuthTime: s.AuthTime}
	id := attest.Identity{Method: attest.OIDC, ExpiresAt: s.Expires, Human: h}
	return edge.Begin(r.Context(), c.log, id, r.Method+" "+r.URL.Path)
}

// ServeHTTP serves the console with its security headers: a strict
// Content-Security-Policy (own scripts and styles only, no inline code, no
// framing, forms to itself), no caching of pages, no referrer.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "+
		"form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	if strings.HasPrefix(c.cfg.URL, "https:") {
		h.Set("Strict-Transport-Security", "max-age=31536000")
	}
	if !strings.HasPrefix(r.URL.Path, "/static/") {
		h.Set("Cache-Control", "no-store")
	}
	c.mux.ServeHTTP(w, r)
}

// call validates req as the gRPC edge would, then calls fn; its error is
// what the gRPC edge would answer (message and code), logged likewise.
func call[Req proto.Message, Resp any](ctx context.Context, c *Console, req Req, fn func(context.Context, Req) (Resp, error)) (Resp, error) {
	var zero Resp
	if err := c.validator.Validate(req); err != nil {
		return zero, answerErr{code: codes.InvalidArgument, msg: "invalid request: " + err.Error()}
	}
	resp, err := fn(ctx, req)
	if err != nil {
		st := edge.Answer(ctx, err, c.cfg.Now())
		return zero, answerErr{code: st.Code(), msg: st.Message()}
	}
	return resp, nil
}

// answerErr is a service's refusal as the console shows it.
type answerErr struct {
	code codes.Code
	msg  string
}

func (e answerErr) Error() string { return e.msg }

var httpCodes = map[codes.Code]int{
	codes.InvalidArgument: http.StatusBadRequest, codes.NotFound: http.StatusNotFound, codes.AlreadyExists: http.StatusConflict,
	codes.PermissionDenied: http.StatusForbidden, codes.Unauthenticated: http.StatusUnauthorized, codes.FailedPrecondition: http.StatusConflict,
	codes.Aborted: http.StatusConflict, codes.ResourceExhausted: http.StatusTooManyRequests, codes.Unavailable: http.StatusServiceUnavailable,
}

// failErr shows err, a service's refusal (call's error), with its HTTP
// status.
func (c *Console) failErr(w http.ResponseWriter, r *http.Request, s *session, err error) {
	var a answerErr
	if !errors.As(err, &a) {
		st := edge.Answer(r.Context(), err, c.cfg.Now())
		a = answerErr{code: st.Code(), msg: st.Message()}
	}
	code, ok := httpCodes[a.code]
	if !ok {
		code = http.StatusInternalServerError
	}
	c.failAs(w, r, s, code, a.msg)
}

func (c *Console) fail(w http.ResponseWriter, r *http.Request, code int, msg string) {
	s, _ := c.session(r)
	c.failAs(w, r, s, code, msg)
}

func (c *Console) failAs(w http.ResponseWriter, r *http.Request, s *session, code int, msg string) {
	w.WriteHeader(code)
	c.render(w, r, s, "error", map[string]any{"Code": code, "Status": http.StatusText(code), "Message": msg})
}

// submit carries out a form's act through fn and sends the browser on to
// next (303: the next page is fetched with GET), or shows the refusal.
func submit[Req proto.Message, Resp any](ctx context.Context, c *Console, w http.ResponseWriter, r *http.Request, s *session,
	req Req, fn func(context.Context, Req) (Resp, error), next string) {
	if _, err := call(ctx, c, req, fn); err != nil {
		c.failErr(w, r, s, err)
		return
	}
	http.Redirect(w, r, localPath(next), http.StatusSeeOther)
}

// samePage is the path and query of ref if it is a page of this console
// (a form's Referer), else "/".
func (c *Console) samePage(ref string) string {
	u, err := url.Parse(ref)
	if err != nil || u.Scheme+"://"+u.Host != c.origin {
		return "/"
	}
	return localPath(u.RequestURI())
}
