package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// consoleCluster starts a TLS cluster with one token per scope whose
// nodes serve the console; it returns the leader's console: its base URL
// (HTTPS, as the API has TLS) and the CA that signed its certificate.
func consoleCluster(t *testing.T) (quorumqpb.QueueClient, consoleSite) {
	t.Helper()
	c, dial := tlsTokenClusterWith(t, 3, func(_ int, cfg *Config) { cfg.AdminAddr = "127.0.0.1:0" })
	return quorumqpb.NewQueueClient(dial(readToken)), consoleSite{
		base:  "https://" + c.Leader(t).AdminAddr() + "/console/",
		roots: c.configs[0].APIClientTLS.RootCAs,
	}
}

type consoleSite struct {
	base  string
	roots *x509.CertPool
}

// browserSession is a cookie-keeping HTTP client of the console that does
// not follow redirects, so a test sees each answer.
type browserSession struct {
	t    *testing.T
	base string
	hc   *http.Client
}

func newBrowserSession(t *testing.T, site consoleSite) *browserSession {
	jar, _ := cookiejar.New(nil)
	return &browserSession{t: t, base: site.base, hc: &http.Client{Jar: jar, Timeout: 20 * time.Second,
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: site.roots}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (b *browserSession) do(method, path string, form url.Values, header http.Header) (int, string, http.Header) {
	b.t.Helper()
	req, err := http.NewRequest(method, b.base+path, strings.NewReader(form.Encode()))
	if err != nil {
		b.t.Fatal(err)
	}
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := b.hc.Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp.Header
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf returns the CSRF token of the page at path.
func (b *browserSession) csrf(path string) string {
	b.t.Helper()
	code, body, _ := b.do(http.MethodGet, path, nil, nil)
	m := csrfField.FindStringSubmatch(body)
	if code != http.StatusOK || m == nil {
		b.t.Fatalf("GET %s: %d, no CSRF field in:\n%.600s", path, code, body)
	}
	return m[1]
}

func (b *browserSession) login(token string) {
	b.t.Helper()
	code, body, h := b.do(http.MethodPost, "login", url.Values{"csrf": {b.csrf("login")}, "token": {token}}, nil)
	if code != http.StatusSeeOther || h.Get("Location") != "/console/" {
		b.t.Fatalf("login: %d %q, want 303 to /console/:\n%.600s", code, h.Get("Location"), body)
	}
}

// depth is the number of ready messages of queue, read over the API.
func depth(t *testing.T, c quorumqpb.QueueClient, queue string) uint64 {
	t.Helper()
	resp, err := c.GetQueue(ctxT(t, 5*time.Second), &quorumqpb.GetQueueRequest{Name: queue})
	if err != nil {
		t.Fatalf("GetQueue %s: %v", queue, err)
	}
	return resp.GetQueue().GetStats().GetReady()
}

// With tokens on, every page asks for a login first, a wrong token is
// refused, and an action without a session changes nothing.
func TestConsoleNeedsLoginWithTokens(t *testing.T) {
	_, base := consoleCluster(t)
	b := newBrowserSession(t, base)
	for _, p := range []string{"", "cluster", "queues/jobs"} {
		if code, _, h := b.do(http.MethodGet, p, nil, nil); code != http.StatusSeeOther || h.Get("Location") != "/console/login" {
			t.Errorf("GET /console/%s without login: %d to %q, want 303 to /console/login", p, code, h.Get("Location"))
		}
	}
	csrf := b.csrf("login")
	if code, body, _ := b.do(http.MethodPost, "login", url.Values{"csrf": {csrf}, "token": {"not-a-token-0123456789"}}, nil); code != http.StatusUnauthorized || !strings.Contains(body, "not one of this cluster&#39;s tokens") {
		t.Errorf("login with a wrong token: %d, want 401 and a message:\n%.600s", code, body)
	}
	code, _, _ := b.do(http.MethodPost, "queues/jobs/send", url.Values{"csrf": {csrf}, "confirmed": {"yes"}, "body": {"x"}}, nil)
	if code != http.StatusUnauthorized {
		t.Errorf("send without login: %d, want 401", code)
	}
	b.login(writeToken)
	if code, body, _ := b.do(http.MethodGet, "", nil, nil); code != http.StatusOK || !strings.Contains(body, "write token") {
		t.Errorf("queues page after login: %d, want 200 naming the token's scope:\n%.600s", code, body)
	}
}

// An action is refused without the session's CSRF token, or from another
// origin, and only a confirmed POST acts.
func TestConsoleRefusesCSRF(t *testing.T) {
	c, base := consoleCluster(t)
	b := newBrowserSession(t, base)
	b.login(adminToken)
	csrf := b.csrf("")
	send := url.Values{"csrf": {csrf}, "body": {"hello"}}
	code, body, _ := b.do(http.MethodPost, "queues/jobs/send", send, nil)
	if code != http.StatusOK || !strings.Contains(body, `name="confirmed" value="yes"`) {
		t.Fatalf("unconfirmed send: %d, want the confirmation page:\n%.800s", code, body)
	}
	send.Set("confirmed", "yes")
	if code, _, h := b.do(http.MethodPost, "queues/jobs/send", send, nil); code != http.StatusSeeOther || !strings.Contains(h.Get("Location"), "Sent+message") {
		t.Fatalf("confirmed send: %d to %q, want 303 back to the queue with the outcome", code, h.Get("Location"))
	}
	if d := depth(t, c, "jobs"); d != 1 {
		t.Fatalf("jobs has %d ready after one confirmed send, want 1", d)
	}

	purge := url.Values{"confirmed": {"yes"}}
	for _, tc := range []struct {
		name   string
		csrf   string
		origin string
	}{
		{"no token", "", ""},
		{"wrong token", "x" + csrf[1:], ""},
		{"another origin", csrf, "http://evil.example"},
	} {
		purge.Set("csrf", tc.csrf)
		h := http.Header{}
		if tc.origin != "" {
			h.Set("Origin", tc.origin)
		}
		code, body, _ := b.do(http.MethodPost, "queues/jobs/purge", purge, h)
		if code != http.StatusForbidden || !strings.Contains(body, "CSRF") {
			t.Errorf("purge with %s: %d, want 403 naming CSRF:\n%.400s", tc.name, code, body)
		}
	}
	if d := depth(t, c, "jobs"); d != 1 {
		t.Fatalf("jobs has %d ready after refused purges, want 1", d)
	}
	purge.Set("csrf", csrf)
	if code, _, h := b.do(http.MethodPost, "queues/jobs/purge", purge, nil); code != http.StatusSeeOther || !strings.Contains(h.Get("Location"), "Purged+1") {
		t.Fatalf("purge with the session's token: %d to %q, want 303 reporting 1 purged", code, h.Get("Location"))
	}
}

// A read-only token sees the queue page without action buttons, and the
// server refuses its actions.
func TestConsoleReadOnlyTokenCannotAct(t *testing.T) {
	c, base := consoleCluster(t)
	admin := newBrowserSession(t, base)
	admin.login(adminToken)
	admin.do(http.MethodPost, "queues/jobs/send", url.Values{"csrf": {admin.csrf("")}, "confirmed": {"yes"}, "body": {"x"}}, nil)
	if d := depth(t, c, "jobs"); d != 1 {
		t.Fatalf("jobs has %d ready, want 1", d)
	}

	b := newBrowserSession(t, base)
	b.login(readToken)
	code, body, _ := b.do(http.MethodGet, "queues/jobs", nil, nil)
	if code != http.StatusOK || strings.Contains(body, `id="actions"`) || strings.Contains(body, "/purge") || !strings.Contains(body, `id="readonly"`) {
		t.Fatalf("queue page for a read token: %d, want 200 without actions:\n%.1500s", code, body)
	}
	csrf := csrfField.FindStringSubmatch(body)[1] // the log-out form's
	for _, action := range []string{"send", "purge", "redrive"} {
		code, body, _ := b.do(http.MethodPost, "queues/jobs/"+action, url.Values{"csrf": {csrf}, "confirmed": {"yes"}, "body": {"x"}, "from": {"jobs"}}, nil)
		if code != http.StatusForbidden || !strings.Contains(body, "scope read") {
			t.Errorf("%s with a read token: %d, want 403 naming the scope:\n%.400s", action, code, body)
		}
	}
	if d := depth(t, c, "jobs"); d != 1 {
		t.Fatalf("jobs has %d ready after a read token's actions, want 1", d)
	}
}

// With TLS on the API, the admin listener speaks the same TLS: a token
// typed into the console, and the session cookie it earns, never cross
// the network in clear. Plain HTTP gets no page; the cookie is Secure.
func TestConsoleTokenTravelsOnlyOverTLS(t *testing.T) {
	_, site := consoleCluster(t)
	plain := "http://" + strings.TrimPrefix(site.base, "https://")
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(plain + "login")
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK || strings.Contains(string(body), `name="token"`) {
			t.Fatalf("plain HTTP to the admin listener of a TLS node: %d, want no login page:\n%.300s", resp.StatusCode, body)
		}
	}
	b := newBrowserSession(t, site)
	_, _, h := b.do(http.MethodGet, "login", nil, nil)
	cookies := (&http.Response{Header: h}).Cookies()
	if len(cookies) == 0 {
		t.Fatal("the login page set no session cookie")
	}
	for _, c := range cookies {
		if !c.Secure || !c.HttpOnly {
			t.Errorf("cookie %s: Secure %v, HttpOnly %v, want both", c.Name, c.Secure, c.HttpOnly)
		}
	}
	resp, err = b.hc.Get(strings.TrimSuffix(site.base, "console/") + "metrics")
	if err != nil {
		t.Fatalf("GET /metrics over HTTPS: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "quorumq_raft_state") {
		t.Errorf("GET /metrics over HTTPS: %d, want 200 with the metrics", resp.StatusCode)
	}
}
