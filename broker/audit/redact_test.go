package audit_test

import (
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/agentictrust/atf/broker/audit"
	"github.com/agentictrust/atf/broker/store"
)

const (
	jwt   = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
	pem   = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\nVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n-----END RSA PRIVATE KEY-----"
	hex32 = "9f86d081884c7d659a2feaa0c55ad015"
	hex64 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	uuid  = "123e4567-e89b-12d3-a456-426614174000"
)

var redactTests = []struct {
	name string
	in   string
	want string
}{
	// What must survive.
	{"version and date", "deploy reports v2.3.1 on 2026-11-26", "deploy reports v2.3.1 on 2026-11-26"},
	{"role", "role reports-read", "role reports-read"},
	{"SPIFFE ID", "agent spiffe://prod.example.org/ns/payments/sa/reconciler-7f3a9c2e1b", "agent spiffe://prod.example.org/ns/payments/sa/reconciler-7f3a9c2e1b"},
	{"32-hex id", "decision " + hex32 + " allowed", "decision " + hex32 + " allowed"},
	{"64-hex hash", "prev=" + hex64, "prev=" + hex64},
	{"UUID", "request " + uuid, "request " + uuid},
	{"order number", "order number 12345", "order number 12345"},
	{"timestamp", "at 2026-11-26T10:00:00Z for 15m", "at 2026-11-26T10:00:00Z for 15m"},
	{"build metadata", "version 1.2.3+20261126", "version 1.2.3+20261126"},
	{"bearer in prose", "the Bearer of bad news", "the Bearer of bad news"},
	{"keys that are not secrets", "max_tokens=1000 token_ttl=30 secret_name: db-creds", "max_tokens=1000 token_ttl=30 secret_name: db-creds"},
	{"SSN with a bad area", "666-12-3456 900-12-3456 000-12-3456", "666-12-3456 900-12-3456 000-12-3456"},
	{"card failing Luhn", "4111 1111 1111 1112", "4111 1111 1111 1112"},
	{"long number", "id 123412341234123412341234", "id 123412341234123412341234"},
	{"IBAN failing mod-97", "GB82WEST12345698765433", "GB82WEST12345698765433"},
	{"short phone", "+123 4567", "+123 4567"},
	{"short prefixes", "AKIA ghp_abc xoxb-1 hvs.abc s.abc eyJ.a.b", "AKIA ghp_abc xoxb-1 hvs.abc s.abc eyJ.a.b"},
	{"long run without digits", "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN", "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN"},
	{"long run of low entropy", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1"},
	{"empty", "", ""},

	// Personal data.
	{"email", "contact alice.smith+ops@example.co.uk today", "contact [REDACTED:email] today"},
	{"international phone", "call +44 20 7946 0958 or +1 (415) 555-0100.", "call [REDACTED:phone] or [REDACTED:phone]."},
	{"US phone", "(415) 555-0100 or 415-555-0100", "[REDACTED:phone] or [REDACTED:phone]"},
	{"card", "card 4111 1111 1111 1111 exp 12/29", "card [REDACTED:card] exp 12/29"},
	{"card with dashes", "5500-0000-0000-0004", "[REDACTED:card]"},
	{"card without separators", "amex 378282246310005", "amex [REDACTED:card]"},
	{"card after another number", "ref 12 4111 1111 1111 1111", "ref 12 [REDACTED:card]"},
	{"two cards", "4111 1111 1111 1111 5500 0000 0000 0004", "[REDACTED:card] [REDACTED:card]"},
	{"SSN", "ssn 123-45-6789", "ssn [REDACTED:ssn]"},
	{"IBAN", "pay DE89 3704 0044 0532 0130 00 or GB82WEST12345698765432", "pay [REDACTED:iban] or [REDACTED:iban]"},

	// Secrets.
	{"vault service token", "hvs.CAESIJ3z8vWc0ZQb3Sx1Zq5mN7kT2yR4pL6dF8hJ0gA", "[REDACTED:vault-token]"},
	{"vault batch and recovery tokens", "hvb.AAAAAQKq1y8dU7xVq1b2c3d4e5f6 hvr.abcdefghij0123456789", "[REDACTED:vault-token] [REDACTED:vault-token]"},
	{"legacy vault token", "got s.Abcdefghij0123456789KLMN", "got [REDACTED:vault-token]"},
	{"AWS keys", "AKIAIOSFODNN7EXAMPLE/ASIAY34FZKBOKMUTVV7A", "[REDACTED:aws-key]/[REDACTED:aws-key]"},
	{"GitHub tokens", "ghp_16C7e42F292c6912E7710c838347Ae178B4a gho_16C7e42F292c6912E7710c838347Ae178B4a github_pat_11ABCDEFG0abcdefghijkl_MNOPQRSTUVWXYZ0123456789",
		"[REDACTED:github-token] [REDACTED:github-token] [REDACTED:github-token]"},
	{"Slack token", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "[REDACTED:slack-token]"},
	{"JWT", "id_token " + jwt + " ok", "id_token [REDACTED:jwt] ok"},
	{"private key", "key:\n" + pem + "\nend", "key:\n[REDACTED:private-key]\nend"},
	{"private key cut off", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA", "[REDACTED:private-key]"},
	{"bearer", "Authorization: Bearer abc123def456", "Authorization: Bearer [REDACTED:bearer]"},
	{"bearer after a credential key", "token: Bearer abc123def456", "token: [REDACTED:credential] [REDACTED:bearer]"},
	{"credentials", `password=hunter2 PASSWD: x1 pwd=y client_secret=z apikey=k api_key=k access_key=k private_key=k`,
		`password=[REDACTED:credential] PASSWD: [REDACTED:credential] pwd=[REDACTED:credential] client_secret=[REDACTED:credential] ` +
			`apikey=[REDACTED:credential] api_key=[REDACTED:credential] access_key=[REDACTED:credential] private_key=[REDACTED:credential]`},
	{"credential keys with prefixes", "AWS_SECRET_ACCESS_KEY=abc db_password: 'p w' X-Auth-Token: t1",
		"AWS_SECRET_ACCESS_KEY=[REDACTED:credential] db_password: '[REDACTED:credential]' X-Auth-Token: [REDACTED:credential]"},
	{"credential in JSON", `{"token": "s3cr3t value", "user": "bob"}`, `{"token": "[REDACTED:credential]", "user": "bob"}`},
	{"credential in a query", "https://example.com/cb?token=abc&x=1", "https://example.com/cb?token=[REDACTED:credential]&x=1"},
	{"credential that looks like an id", "token=" + uuid + " secret: " + hex32, "token=[REDACTED:credential] secret: [REDACTED:credential]"},
	{"high entropy", "key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY end", "key [REDACTED:high-entropy] end"},
	{"hex inside a longer token is no id", "key sk_Live_" + hex32, "key [REDACTED:high-entropy]"},

	// Already redacted, and invalid UTF-8.
	{"redacted", "password=[REDACTED:credential] [REDACTED:email]", "password=[REDACTED:credential] [REDACTED:email]"},
	{"invalid UTF-8", "caf\xe9 alice@example.com \xff", "caf\uFFFD [REDACTED:email] \uFFFD"},
}

func TestRedact(t *testing.T) {
	for _, tt := range redactTests {
		t.Run(tt.name, func(t *testing.T) {
			got := audit.Redact(tt.in)
			if got != tt.want {
				t.Errorf("Redact(%q)\n got %q\nwant %q", tt.in, got, tt.want)
			}
			if again := audit.Redact(got); again != got {
				t.Errorf("Redact is not idempotent on %q: %q", got, again)
			}
		})
	}
}

// Redact keeps at most 64 KiB, drops a token the cut would split, and stays
// idempotent when its markers lengthen the text past the limit.
func TestRedactLong(t *testing.T) {
	const limit = 64 << 10
	pad := strings.Repeat("x", limit-10)
	tests := []struct {
		name  string
		in    string
		check func(t *testing.T, out string)
	}{
		{"words", strings.Repeat("word ", 30000), func(t *testing.T, out string) {
			if want := strings.Repeat("word ", limit/5); out != want {
				t.Errorf("len(out) = %d, want the first %d words (%d bytes)", len(out), limit/5, len(want))
			}
		}},
		{"secret across the cut", pad + " AKIAIOSFODNN7EXAMPLE", func(t *testing.T, out string) {
			if want := pad + " "; out != want {
				t.Errorf("out ends %q, want the padding and a space", out[len(out)-20:])
			}
		}},
		{"markers longer than their matches", strings.Repeat("a@b.co ", 20000), func(t *testing.T, out string) {
			if strings.Contains(out, "@") || strings.Count(out, "[REDACTED:email]") < 1000 {
				t.Errorf("out = %.80q... (%d bytes), want only markers", out, len(out))
			}
		}},
		{"rune across the cut", strings.Repeat("é", limit), func(t *testing.T, out string) {
			if out != strings.Repeat("é", limit/2) {
				t.Errorf("len(out) = %d, want %d whole runes", len(out), limit/2)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := audit.Redact(tt.in)
			if len(out) > limit {
				t.Fatalf("len(Redact) = %d, want at most %d", len(out), limit)
			}
			if !utf8.ValidString(out) {
				t.Fatalf("Redact returned invalid UTF-8")
			}
			if again := audit.Redact(out); again != out {
				t.Fatalf("Redact is not idempotent: %d bytes became %d", len(out), len(again))
			}
			tt.check(t, out)
		})
	}
}

// fuzzSecrets are embedded, between newlines, in the fuzzer's text.
var fuzzSecrets = []string{
	"AKIAIOSFODNN7EXAMPLE",
	"ghp_16C7e42F292c6912E7710c838347Ae178B4a",
	"hvs.CAESIJ3z8vWc0ZQb3Sx1Zq5mN7kT2yR4pL6dF8hJ0gA",
	"4111 1111 1111 1111",
	"alice@example.com",
	jwt,
	pem,
}

func FuzzRedact(f *testing.F) {
	for _, tt := range redactTests {
		f.Add(tt.in, tt.want)
	}
	f.Add("password=", "+1 415")
	f.Add("spiffe://td/a", "0123")
	f.Fuzz(func(t *testing.T, a, b string) {
		check := func(in string) string {
			out := audit.Redact(in)
			if !utf8.ValidString(out) {
				t.Fatalf("Redact(%q) = %q: invalid UTF-8", in, out)
			}
			if len(out) > 64<<10 {
				t.Fatalf("Redact returned %d bytes", len(out))
			}
			if again := audit.Redact(out); again != out {
				t.Fatalf("Redact is not idempotent:\n  in %q\n out %q\nagain %q", in, out, again)
			}
			return out
		}
		check(a + b)
		for _, secret := range fuzzSecrets {
			in := a + "\n" + secret + "\n" + b
			if strings.Count(in, secret) != 1 {
				continue // the fuzzer wrote it too; no rule need see that copy
			}
			if out := check(in); strings.Contains(out, secret) {
				t.Fatalf("Redact(%q) = %q: the secret survived", in, out)
			}
		}
	})
}

// ExampleRedact shows what Redact keeps and what it replaces.
func ExampleRedact() {
	fmt.Println(audit.Redact("reconcile invoices for alice@example.com, card 4111 1111 1111 1111, as spiffe://td/agent/recon"))
	fmt.Println(audit.Redact("retry with password=hunter2 after 2026-11-26"))
	// Output:
	// reconcile invoices for [REDACTED:email], card [REDACTED:card], as spiffe://td/agent/recon
	// retry with password=[REDACTED:credential] after 2026-11-26
}

// BenchmarkRedact times Redact on a typical 200-byte purpose, with and
// without something to redact, against hashing an audit record that carries
// it (the cost every audit record already has), measured in the same run.
// It reports and never fails on speed.
func BenchmarkRedact(b *testing.B) {
	for _, bc := range []struct{ name, purpose string }{
		{"clean", "Reconcile the November invoices for team payments: read the ledger through reports-read, " +
			"compare totals per region with the billing export, and open ticket OPS-4821 for any gap over 0.5%."},
		{"secrets", "Reconcile invoices for alice@example.com: read the ledger with token=s3cr3t-t0ken-value, " +
			"compare with card 4111 1111 1111 1111 totals, and call +44 20 7946 0958 about ticket OPS-4821."},
	} {
		b.Run(bc.name, func(b *testing.B) {
			rec := store.AuditRecord{Seq: 42, Time: time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC), Kind: "credential_issued",
				Actor: "spiffe://td/agent/recon", Subject: "acc-1", Detail: map[string]string{"purpose": bc.purpose}, Prev: hex64}
			b.SetBytes(int64(len(bc.purpose)))
			for b.Loop() {
				audit.Redact(bc.purpose)
			}
			redact := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			start := time.Now()
			for range b.N {
				rec.ComputeHash()
			}
			hash := float64(time.Since(start).Nanoseconds()) / float64(b.N)
			b.ReportMetric(hash, "hash-ns/op")
			b.ReportMetric(redact/hash, "x-hash")
		})
	}
}
