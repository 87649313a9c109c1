// Package raftnet is the stream layer under hashicorp/raft's
// NetworkTransport: plain TCP, or TLS when a tls.Config is given.
//
// Raft's NetworkTransport does the framing, pooling and pipelining; a stream
// layer only has to accept and dial connections. Keeping it this small means
// the Raft port can be wrapped in TLS (mutual TLS when the config asks for
// client certificates) without touching the transport, and the advertised
// address can differ from the bound one (NAT, 0.0.0.0 binds, :0 in tests).
//
// The Raft port is reachable by anyone who can reach the host, and raft's
// transport gives every accepted connection its own goroutine and 256 KiB of
// buffers, with no deadline of its own. So the layer bounds what a peer that
// is not a cluster member can hold before it has proved anything: a
// connection must finish its TLS handshake and send its first byte within
// HandshakeTimeout, is closed after IdleTimeout without traffic, and
// connections beyond MaxConns in total or MaxConnsPerIP from one address are
// closed at accept, before raft sees them. Without mutual TLS the layer
// cannot authenticate a peer; the caller may pass AllowPeer to close
// connections from IPs that are not its servers'.
package raftnet

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// ErrNoAdvertise is returned when the bind address is unspecified (0.0.0.0
// or ::) and no advertise address was given: other servers could not reach
// an address like that.
var ErrNoAdvertise = errors.New("raftnet: bind address is unspecified; an advertise address is required")

// Defaults of the accepted-connection limits (Config fields left zero).
const (
	// DefaultHandshakeTimeout bounds an accepted connection's TLS handshake
	// and the arrival of its first byte.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultIdleTimeout closes an accepted connection silent this long. A
	// leader writes to its followers every heartbeat and every tick, so
	// only a spare pooled connection idles that long; raft redials it.
	DefaultIdleTimeout = 2 * time.Minute
	// DefaultMaxConns caps accepted connections open at once. A peer
	// holds a few (a pool of MaxPool, a pipeline, a snapshot send), so a
	// five-server cluster needs a few dozen.
	DefaultMaxConns = 512
	// DefaultMaxConnsPerIP caps accepted connections from one IP address.
	// Several servers may share an address (one host, tests, `quorumq dev`).
	DefaultMaxConnsPerIP = 64
)

// Layer is a raft.StreamLayer over TCP with optional TLS.
type Layer struct {
	ln        net.Listener
	advertise net.Addr
	serverTLS *tls.Config
	clientTLS *tls.Config
	limits    Limits // defaults filled in
	onRefused func(reason string)
	allowPeer func(net.IP) bool

	mu    sync.Mutex
	open  int            // accepted connections not yet closed
	perIP map[string]int // the same, by remote IP
}

var _ raft.StreamLayer = (*Layer)(nil)

// Config says where to listen and how to secure the stream.
type Config struct {
	// Bind is the host:port to listen on; port 0 picks a free port.
	Bind string
	// Advertise is the host:port other servers dial. "" uses the bound
	// address, which must then be a specific IP.
	Advertise string
	// ServerTLS secures accepted connections; nil means plain TCP. Set
	// ClientAuth to tls.RequireAndVerifyClientCert for mutual TLS.
	ServerTLS *tls.Config
	// ClientTLS secures dialed connections; nil means plain TCP. Both or
	// neither must be set, since every server both accepts and dials.
	ClientTLS *tls.Config

	// Limits bound accepted connections.
	Limits Limits
	// OnRefused, if set, is called with the reason ("max-conns",
	// "max-conns-per-ip" or "not-a-peer") for each connection closed at
	// accept.
	OnRefused func(reason string)
	// AllowPeer, if set, is asked about the remote IP of every accepted
	// connection; one it refuses is closed at accept ("not-a-peer"). A
	// cluster without mutual TLS uses it to refuse hosts that are not its
	// servers.
	AllowPeer func(net.IP) bool
}

// Limits bound what accepted connections may hold; a zero field takes the
// Default of its name.
type Limits struct {
	HandshakeTimeout time.Duration
	IdleTimeout      time.Duration
	MaxConns         int
	MaxConnsPerIP    int
}

func (c *Limits) fillDefaults() {
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.MaxConns <= 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.MaxConnsPerIP <= 0 {
		c.MaxConnsPerIP = DefaultMaxConnsPerIP
	}
}

// Listen opens the listener described by cfg.
func Listen(cfg Config) (*Layer, error) {
	if (cfg.ServerTLS == nil) != (cfg.ClientTLS == nil) {
		return nil, errors.New("raftnet: ServerTLS and ClientTLS must both be set or both be nil")
	}
	ln, err := net.Listen("tcp", cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("raftnet: listen on %q: %w", cfg.Bind, err)
	}
	adv, err := advertiseAddr(ln.Addr(), cfg.Advertise)
	if err != nil {
		ln.Close()
		return nil, err
	}
	cfg.Limits.fillDefaults()
	return &Layer{ln: ln, advertise: adv, serverTLS: cfg.ServerTLS, clientTLS: cfg.ClientTLS,
		limits: cfg.Limits, onRefused: cfg.OnRefused, allowPeer: cfg.AllowPeer, perIP: map[string]int{}}, nil
}

func advertiseAddr(bound net.Addr, advertise string) (net.Addr, error) {
	if advertise != "" {
		a, err := net.ResolveTCPAddr("tcp", advertise)
		if err != nil {
			return nil, fmt.Errorf("raftnet: advertise address %q: %w", advertise, err)
		}
		if a.IP == nil || a.IP.IsUnspecified() {
			return nil, fmt.Errorf("raftnet: advertise address %q must name a specific IP", advertise)
		}
		return a, nil
	}
	tcp, ok := bound.(*net.TCPAddr)
	if !ok || tcp.IP.IsUnspecified() {
		return nil, ErrNoAdvertise
	}
	return tcp, nil
}

// Accept waits for the next Raft connection within the limits and, with
// TLS, wraps it. A connection over a cap, or from an IP AllowPeer refuses,
// is closed here and the wait goes on. The handshake runs on the first read, in raft's per-connection
// goroutine, so a slow or hostile peer cannot stall the accept loop; the
// deadline set here bounds it.
func (l *Layer) Accept() (net.Conn, error) {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return nil, err
		}
		ip := remoteIP(c)
		reason := ""
		if l.allowPeer != nil && !l.allowPeer(net.ParseIP(ip)) {
			reason = "not-a-peer"
		} else {
			reason = l.admit(ip)
		}
		if reason != "" {
			// Counted before the close, so that the refusal shows by the
			// time the peer sees its connection end.
			if l.onRefused != nil {
				l.onRefused(reason)
			}
			c.Close()
			continue
		}
		c.SetDeadline(time.Now().Add(l.limits.HandshakeTimeout))
		lc := &limitedConn{Conn: c, raw: c, idle: l.limits.IdleTimeout, release: func() { l.release(ip) }}
		if l.serverTLS != nil {
			tc := tls.Server(c, l.serverTLS)
			lc.Conn, lc.handshake = tc, tc.Handshake
		}
		return lc, nil
	}
}

func remoteIP(c net.Conn) string {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	return c.RemoteAddr().String()
}

// admit takes a slot for a connection from ip, or says which cap is full.
func (l *Layer) admit(ip string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.open >= l.limits.MaxConns:
		return "max-conns"
	case l.perIP[ip] >= l.limits.MaxConnsPerIP:
		return "max-conns-per-ip"
	}
	l.open++
	l.perIP[ip]++
	return ""
}

func (l *Layer) release(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.perIP[ip]--; l.perIP[ip] <= 0 {
		delete(l.perIP, ip)
	}
}

// OpenConns is the number of accepted connections open now.
func (l *Layer) OpenConns() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

// limitedConn is an accepted connection under the layer's limits: until its
// first byte arrives (after the TLS handshake, if any) the deadline Accept
// set is in force; after that each read and write must make progress within
// the idle timeout.
type limitedConn struct {
	net.Conn           // what raft reads and writes: raw, or TLS over raw
	raw       net.Conn // the TCP connection, whose deadlines bound both
	idle      time.Duration
	handshake func() error // TLS handshake; nil for plain TCP
	started   bool         // the first byte arrived: idle deadlines from now on
	release   func()
	closeOnce sync.Once
}

func (c *limitedConn) Read(p []byte) (int, error) {
	if !c.started {
		if c.handshake != nil {
			if err := c.handshake(); err != nil {
				return 0, err
			}
		}
		n, err := c.Conn.Read(p)
		if n > 0 {
			c.started = true
		}
		return n, err
	}
	c.raw.SetReadDeadline(time.Now().Add(c.idle))
	return c.Conn.Read(p)
}

func (c *limitedConn) Write(p []byte) (int, error) {
	c.raw.SetWriteDeadline(time.Now().Add(c.idle))
	return c.Conn.Write(p)
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(c.release)
	return err
}

// Close stops listening. Connections already accepted stay open; raft's
// transport closes them.
func (l *Layer) Close() error { return l.ln.Close() }

// Addr is the advertised address, which raft puts in its configuration.
func (l *Layer) Addr() net.Addr { return l.advertise }

// BoundAddr is the address actually listened on.
func (l *Layer) BoundAddr() net.Addr { return l.ln.Addr() }

// Dial connects to another server's Raft port within timeout, including the
// TLS handshake when configured.
func (l *Layer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	if l.clientTLS == nil {
		return d.Dial("tcp", string(address))
	}
	cfg := l.clientTLS.Clone()
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(string(address))
		if err != nil {
			return nil, fmt.Errorf("raftnet: dial %q: %w", address, err)
		}
		cfg.ServerName = host
	}
	return tls.DialWithDialer(d, "tcp", string(address), cfg)
}
