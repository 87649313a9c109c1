package console

import (
	"context"
	"crypto/tls"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/quorumq/quorumq/client"
)

// prefix is where the console is mounted on the admin listener.
const prefix = "/console/"

// Access is what a session may do; it mirrors the API's token scopes.
type Access int

// The access levels, ordered: each includes the ones before it.
const (
	AccessNone  Access = iota // not logged in
	AccessRead                // every page, no action
	AccessWrite               // send a test message, redrive
	AccessAdmin               // purge
)

func (a Access) String() string {
	switch a {
	case AccessRead:
		return "read"
	case AccessWrite:
		return "write"
	case AccessAdmin:
		return "admin"
	}
	return "none"
}

// LocalInfo describes the node that serves the console.
type LocalInfo struct {
	NodeID string
}

// Config configures a Console.
type Config struct {
	// APIAddr is the node's own API address. The console calls the API
	// there with the operator's token, as any client does.
	APIAddr string
	// TLS is the client TLS configuration for the API (nil: plaintext).
	TLS *tls.Config
	// Authorize returns the access a token grants, and false when it is no
	// token of the cluster. Nil means the cluster has no tokens: no login,
	// and every visitor has AccessAdmin, as every API caller has then.
	Authorize func(token string) (Access, bool)
	// Local describes the serving node (nil: unknown).
	Local func() LocalInfo
	// Refresh is how often a page reloads its live part (default 3 s).
	Refresh time.Duration
	// Logger receives failures to reach the API (default: discard).
	Logger *slog.Logger
}

// callTimeout bounds the API calls behind one page.
const callTimeout = 5 * time.Second

// clientIdle closes an API client unused this long.
const clientIdle = 10 * time.Minute

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Console is the web console's HTTP handler. Close it when the server
// stops.
type Console struct {
	cfg      Config
	mux      *http.ServeMux
	sessions sessions
	pages    map[string]*template.Template

	mu      sync.Mutex
	clients map[string]*apiClient // by token
	closed  bool
}

type apiClient struct {
	c    *client.Client
	last time.Time
}

// New returns a Console. Mount it at "/console/" (see Prefix).
func New(cfg Config) (*Console, error) {
	if cfg.APIAddr == "" {
		return nil, errors.New("console: Config.APIAddr is empty")
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = 3 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Console{cfg: cfg, mux: http.NewServeMux(), sessions: sessions{m: map[string]*session{}},
		pages: map[string]*template.Template{}, clients: map[string]*apiClient{}}
	for _, p := range []string{"queues", "queue", "cluster", "login", "confirm", "error"} {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+p+".html")
		if err != nil {
			return nil, fmt.Errorf("console: template %s: %w", p, err)
		}
		c.pages[p] = t
	}
	static, _ := fs.Sub(staticFS, "static")
	c.mux.Handle("GET "+prefix+"static/", http.StripPrefix(prefix+"static/", http.FileServerFS(static)))
	c.mux.HandleFunc("GET "+prefix+"login", c.loginPage)
	c.mux.HandleFunc("POST "+prefix+"login", c.login)
	c.mux.HandleFunc("POST "+prefix+"logout", c.logout)
	c.mux.HandleFunc("GET "+prefix+"{$}", c.authed(AccessRead, c.queuesPage))
	c.mux.HandleFunc("GET "+prefix+"queues/{queue}", c.authed(AccessRead, c.queuePage))
	c.mux.HandleFunc("POST "+prefix+"queues/{queue}/send", c.authed(AccessWrite, c.sendAction))
	c.mux.HandleFunc("POST "+prefix+"queues/{queue}/redrive", c.authed(AccessWrite, c.redriveAction))
	c.mux.HandleFunc("POST "+prefix+"queues/{queue}/purge", c.authed(AccessAdmin, c.purgeAction))
	c.mux.HandleFunc("GET "+prefix+"cluster", c.authed(AccessRead, c.clusterPage))
	return c, nil
}

// Prefix is the path the console expects to be mounted at.
func Prefix() string { return prefix }

// ServeHTTP implements http.Handler.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	c.mux.ServeHTTP(w, r)
}

// Close closes the API clients.
func (c *Console) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	var errs []error
	for tok, ac := range c.clients {
		errs = append(errs, ac.c.Close())
		delete(c.clients, tok)
	}
	return errors.Join(errs...)
}

func (c *Console) tokensOn() bool { return c.cfg.Authorize != nil }

// session returns the request's session; with tokens off every session has
// admin access.
func (c *Console) session(w http.ResponseWriter, r *http.Request) *session {
	access := AccessNone
	if !c.tokensOn() {
		access = AccessAdmin
	}
	return c.sessions.get(w, r, access)
}

// authed wraps a page or action: it needs a session of at least need, and
// a POST needs the session's CSRF token.
func (c *Console) authed(need Access, h func(w http.ResponseWriter, r *http.Request, v *view)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		se := c.session(w, r)
		if se.access == AccessNone {
			if r.Method == http.MethodGet {
				http.Redirect(w, r, prefix+"login", http.StatusSeeOther)
				return
			}
			c.fail(w, r, se, http.StatusUnauthorized, errors.New("log in first: this cluster needs a token"))
			return
		}
		if r.Method == http.MethodPost && !checkCSRF(r, se) {
			c.fail(w, r, se, http.StatusForbidden, errors.New("refused: the form's CSRF token is missing or stale (reload the page and try again)"))
			return
		}
		if se.access < need {
			c.fail(w, r, se, http.StatusForbidden, fmt.Errorf("refused: this needs a token with scope %s; yours has scope %s", need, se.access))
			return
		}
		h(w, r, c.newView(r, se))
	}
}

// api returns the API client for the session's token, creating it on
// first use.
// call gives a handler of page the session's API client and a context
// that ends after timeout; when there is no client it writes the page's
// error and ok is false.
func (c *Console) call(w http.ResponseWriter, r *http.Request, v *view, page string, timeout time.Duration) (ctx context.Context, api *client.Client, cancel context.CancelFunc, ok bool) {
	ctx, cancel = context.WithTimeout(r.Context(), timeout)
	api, err := c.api(ctx, v.se)
	if err != nil {
		cancel()
		c.apiFail(w, v, page, err)
		return nil, nil, nil, false
	}
	return ctx, api, cancel, true
}

func (c *Console) api(ctx context.Context, se *session) (*client.Client, error) {
	now := time.Now()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, errors.New("console is stopped")
	}
	for tok, ac := range c.clients {
		if now.Sub(ac.last) > clientIdle {
			ac.c.Close()
			delete(c.clients, tok)
		}
	}
	if ac, ok := c.clients[se.token]; ok {
		ac.last = now
		c.mu.Unlock()
		return ac.c, nil
	}
	c.mu.Unlock()
	opts := []client.Option{client.WithSendGathering(false), client.WithConsumerName("console")}
	if c.cfg.TLS != nil {
		opts = append(opts, client.WithTLS(c.cfg.TLS))
	}
	if se.token != "" {
		opts = append(opts, client.WithToken(se.token))
	}
	cl, err := client.New(ctx, []string{c.cfg.APIAddr}, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to the API at %s: %w", c.cfg.APIAddr, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		cl.Close()
		return nil, errors.New("console is stopped")
	}
	if ac, ok := c.clients[se.token]; ok { // another request won the race
		cl.Close()
		return ac.c, nil
	}
	c.clients[se.token] = &apiClient{c: cl, last: now}
	return cl, nil
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	se := c.session(w, r)
	if !c.tokensOn() || se.access != AccessNone {
		http.Redirect(w, r, prefix, http.StatusSeeOther)
		return
	}
	c.render(w, http.StatusOK, "login", c.newView(r, se))
}

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	se := c.session(w, r)
	if !checkCSRF(r, se) {
		c.fail(w, r, se, http.StatusForbidden, errors.New("refused: the form's CSRF token is missing or stale (reload the page and try again)"))
		return
	}
	if !c.tokensOn() {
		http.Redirect(w, r, prefix, http.StatusSeeOther)
		return
	}
	token := strings.TrimSpace(r.PostFormValue("token"))
	access, ok := c.cfg.Authorize(token)
	if !ok || access == AccessNone {
		v := c.newView(r, se)
		v.Error = "That token is not one of this cluster's tokens."
		c.render(w, http.StatusUnauthorized, "login", v)
		return
	}
	c.sessions.login(w, r, se, token, access)
	http.Redirect(w, r, prefix, http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request) {
	se := c.session(w, r)
	if !checkCSRF(r, se) {
		c.fail(w, r, se, http.StatusForbidden, errors.New("refused: the form's CSRF token is missing or stale"))
		return
	}
	c.sessions.logout(w, r, se)
	http.Redirect(w, r, prefix, http.StatusSeeOther)
}

func (c *Console) render(w http.ResponseWriter, code int, page string, v *view) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	if err := c.pages[page].Execute(w, v); err != nil {
		c.cfg.Logger.Warn("console: render", "page", page, "err", err)
	}
}

// fail renders an error page with code.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, se *session, code int, err error) {
	v := c.newView(r, se)
	v.Error = err.Error()
	c.render(w, code, "error", v)
}
