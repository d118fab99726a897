package notify

import (
	"bytes"
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

const (
	defaultTimeout     = 5 * time.Second
	defaultMaxAttempts = 5
	defaultBackoff     = 500 * time.Millisecond
	// maxBackoff bounds the wait between attempts, and maxRetryAfter how
	// long a receiver's Retry-After may make it.
	maxBackoff    = 30 * time.Second
	maxRetryAfter = time.Minute
	// maxDrain is how much of an answer's body is read, so that the
	// connection can be used again.
	maxDrain = 64 << 10
)

// SignatureHeader carries "sha256=" and the hex HMAC-SHA256 of the body
// under the Webhook's Secret.
const SignatureHeader = "X-ATF-Signature"

// Webhook POSTs each event as JSON, with a "text" field equal to Summary so
// that Slack- and Mattermost-style incoming webhooks show it. If Secret is
// set, the SignatureHeader lets the receiver check that the body came from
// the broker.
//
// Network errors, timeouts, 429 and 5xx answers are retried with
// exponential backoff and jitter, waiting at least what a Retry-After header
// asks (up to a minute); other answers outside 2xx are final. Errors name
// the URL's scheme, host and path only: webhook URLs often carry a secret in
// their query or userinfo.
type Webhook struct {
	URL    string
	Secret []byte
	// Timeout bounds each attempt; default 5 s.
	Timeout time.Duration
	// MaxAttempts bounds the attempts at one event; default 5.
	MaxAttempts int
	// Backoff is the wait before the second attempt, doubled for each
	// after it, up to 30 s; default 500 ms.
	Backoff time.Duration
	// Client sends the requests; by default one that does not follow
	// redirects, so that a signed body goes only where it was meant to.
	Client *http.Client
}

var defaultClient = &http.Client{
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// StatusError is a webhook's answer outside 2xx, for errors.As.
type StatusError struct {
	URL        string // scheme://host/path only
	StatusCode int
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("notify: webhook %s answered %d %s", e.URL, e.StatusCode, http.StatusText(e.StatusCode))
}

// retryable reports whether an answer may be different if asked again.
func (e *StatusError) retryable() bool {
	return e.StatusCode == http.StatusTooManyRequests || e.StatusCode >= 500
}

// Send delivers ev, retrying as the Webhook says, until it is delivered,
// an answer is final, the attempts run out or ctx is done.
func (w *Webhook) Send(ctx context.Context, ev Event) error {
	u, err := url.Parse(w.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// The parse error would quote the URL.
		return errors.New("notify: webhook URL is not an http or https URL")
	}
	// Chat webhooks keep their secret in the path: errors and logs name
	// only the scheme and host.
	where := (&url.URL{Scheme: u.Scheme, Host: u.Host}).String()
	body, err := json.Marshal(struct {
		Event
		Text string `json:"text"`
	}{ev, ev.Summary})
	if err != nil {
		return fmt.Errorf("notify: encode event %s: %w", ev.ID, err)
	}
	var sig string
	if len(w.Secret) > 0 {
		mac := hmac.New(sha256.New, w.Secret)
		mac.Write(body)
		sig = "sha256=" + hex.EncodeToString(mac.Sum(nil))
	}

	attempts := w.MaxAttempts
	if attempts <= 0 {
		attempts = defaultMaxAttempts
	}
	backoff := cmp.Or(w.Backoff, defaultBackoff)
	for attempt := 1; ; attempt++ {
		retryAfter, err := w.post(ctx, u.String(), where, body, sig)
		if err == nil {
			return nil
		}
		if se := (*StatusError)(nil); errors.As(err, &se) && !se.retryable() {
			return err
		}
		if attempt == attempts {
			return fmt.Errorf("%w (gave up after %d attempts)", err, attempt)
		}
		wait := max(backoff/2+rand.N(backoff), min(retryAfter, maxRetryAfter))
		backoff = min(2*backoff, maxBackoff)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (stopped after %d attempts: %w)", err, attempt, context.Cause(ctx))
		case <-t.C:
		}
	}
}

// post makes one attempt. It returns what the answer's Retry-After asks.
func (w *Webhook) post(ctx context.Context, target, where string, body []byte, sig string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, cmp.Or(w.Timeout, defaultTimeout))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("notify: webhook %s: %w", where, withoutURL(err))
	}
	req.Header.Set("Content-Type", "application/json")
	if sig != "" {
		req.Header.Set(SignatureHeader, sig)
	}
	resp, err := cmp.Or(w.Client, defaultClient).Do(req)
	if err != nil {
		return 0, fmt.Errorf("notify: webhook %s: %w", where, withoutURL(err))
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return 0, nil
	}
	return retryAfter(resp.Header.Get("Retry-After")), &StatusError{URL: where, StatusCode: resp.StatusCode}
}

// withoutURL drops the *url.Error that net/http wraps its errors in: its
// message quotes the whole URL.
func withoutURL(err error) error {
	if ue := (*url.Error)(nil); errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// retryAfter reads a Retry-After header: seconds, or an HTTP date.
func retryAfter(v string) time.Duration {
	if s, err := strconv.Atoi(v); err == nil {
		return time.Duration(min(max(s, 0), int(maxRetryAfter/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}
