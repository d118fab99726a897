package console

import (
	"slices"
	"testing"

	"github.com/agentictrust/atf/broker/config"
)

// A sign-in or a form never sends the browser off the console: an open
// redirect would let a link to the console forward a signed-in person
// anywhere.
func TestLocalPath(t *testing.T) {
	for in, want := range map[string]string{
		"/approvals":                "/approvals",
		"/agent?id=spiffe%3A%2F%2F": "/agent?id=spiffe%3A%2F%2F",
		"":                          "/",
		"https://evil.example/":     "/",
		"//evil.example/x":          "/",
		"/\\evil.example":           "/",
		"approvals":                 "/",
		"javascript:alert(1)":       "/",
	} {
		if got := localPath(in); got != want {
			t.Errorf("localPath(%q) = %q, want %q", in, got, want)
		}
	}
	c := &Console{origin: "https://atf.example"}
	for in, want := range map[string]string{
		"https://atf.example/kill?x=1": "/kill?x=1",
		"https://evil.example/kill":    "/",
		"http://atf.example/kill":      "/",
		"":                             "/",
	} {
		if got := c.samePage(in); got != want {
			t.Errorf("samePage(%q) = %q, want %q", in, got, want)
		}
	}
}

// A sealed cookie opens only under its own name and unaltered.
func TestSealer(t *testing.T) {
	s, err := newSealer("")
	if err != nil {
		t.Fatal(err)
	}
	in := session{ID: "id", Subject: "sub", Roles: []string{"auditor"}, CSRF: "tok"}
	v, err := s.seal(sessionCookie, in)
	if err != nil {
		t.Fatal(err)
	}
	var out session
	if err := s.open(sessionCookie, v, &out); err != nil || out.Subject != "sub" || out.CSRF != "tok" {
		t.Fatalf("open = %+v, %v", out, err)
	}
	if err := s.open(loginCookie, v, &out); err == nil {
		t.Error("a session cookie's value opened as a login cookie")
	}
	b := []byte(v)
	b[len(b)/2] ^= 1
	if err := s.open(sessionCookie, string(b), &out); err == nil {
		t.Error("an altered cookie opened")
	}
	other, _ := newSealer("")
	if err := other.open(sessionCookie, v, &out); err == nil {
		t.Error("a cookie sealed under another key opened")
	}
}

// The roles claim maps to console roles through the configuration only.
func TestRoles(t *testing.T) {
	p := NewPeople(config.ConsoleConfig{Roles: map[string][]string{
		config.ConsoleApprover: {"approvers"}, config.ConsoleAuditor: {"audit", "approvers"},
	}}, nil, nil)
	for name, tt := range map[string]struct {
		claim any
		want  []string
	}{
		"list":            {[]any{"approvers", "other"}, []string{config.ConsoleApprover, config.ConsoleAuditor}},
		"space-separated": {"audit other", []string{config.ConsoleAuditor}},
		"no match":        {[]any{"admins"}, nil},
		"not strings":     {[]any{1, true}, nil},
		"absent":          {nil, nil},
	} {
		if got := p.roles(tt.claim); !slices.Equal(got, tt.want) {
			t.Errorf("%s: roles = %v, want %v", name, got, tt.want)
		}
	}
}

func TestDiffLines(t *testing.T) {
	got := diffLines("a\nb\nc", "a\nc\nd")
	want := []diffLine{{" ", "a"}, {"-", "b"}, {" ", "c"}, {"+", "d"}}
	if !slices.Equal(got, want) {
		t.Errorf("diff = %v, want %v", got, want)
	}
}
