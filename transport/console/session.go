package console

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// cookieName names the session cookie.
const cookieName = "quorumq_console"

const (
	// sessionIdle ends a session unused this long.
	sessionIdle = 8 * time.Hour
	// maxSessions bounds the sessions kept: a client that never sends the
	// cookie back makes a new one with every request, so the oldest are
	// dropped rather than memory growing.
	maxSessions = 4096
)

// session is one browser's state. The token never leaves the server.
type session struct {
	id     string
	csrf   string
	token  string // "" until login (or always, with tokens off)
	access Access // AccessNone until login
	last   time.Time
}

// sessions holds every live session by ID.
type sessions struct {
	mu sync.Mutex
	m  map[string]*session
}

func randomID() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b)
}

// get returns the request's session, or a new one (with a Set-Cookie on w)
// when it has none or an expired one. access is what a new session gets.
func (s *sessions) get(w http.ResponseWriter, r *http.Request, access Access) *session {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, err := r.Cookie(cookieName); err == nil {
		if se, ok := s.m[c.Value]; ok && now.Sub(se.last) < sessionIdle {
			se.last = now
			return se
		}
	}
	return s.newLocked(w, r, access, "")
}

// login replaces old with a new session that holds token: a new ID, so an
// ID planted before login (session fixation) is worth nothing after it.
func (s *sessions) login(w http.ResponseWriter, r *http.Request, old *session, token string, access Access) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, old.id)
	return s.newLocked(w, r, access, token)
}

// logout forgets se and clears the cookie.
func (s *sessions) logout(w http.ResponseWriter, r *http.Request, se *session) {
	s.mu.Lock()
	delete(s.m, se.id)
	s.mu.Unlock()
	http.SetCookie(w, cookie(r, "", -1))
}

func (s *sessions) newLocked(w http.ResponseWriter, r *http.Request, access Access, token string) *session {
	now := time.Now()
	if len(s.m) >= maxSessions {
		var oldest *session
		for id, se := range s.m {
			if now.Sub(se.last) >= sessionIdle {
				delete(s.m, id)
			} else if oldest == nil || se.last.Before(oldest.last) {
				oldest = se
			}
		}
		if len(s.m) >= maxSessions && oldest != nil {
			delete(s.m, oldest.id)
		}
	}
	se := &session{id: randomID(), csrf: randomID(), token: token, access: access, last: now}
	s.m[se.id] = se
	http.SetCookie(w, cookie(r, se.id, 0))
	return se
}

func cookie(r *http.Request, value string, maxAge int) *http.Cookie {
	return &http.Cookie{Name: cookieName, Value: value, Path: prefix, MaxAge: maxAge,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil}
}

// checkCSRF refuses a POST that does not carry the session's CSRF token
// in its "csrf" field, or that a page of another origin sent.
func checkCSRF(r *http.Request, se *session) bool {
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return false
		}
	}
	got := r.PostFormValue("csrf")
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(se.csrf)) == 1
}
