// Package raftnet is the stream layer under hashicorp/raft's
// NetworkTransport: plain TCP, or TLS when a tls.Config is given.
//
// Raft's NetworkTransport does the framing, pooling and pipelining; a stream
// layer only has to accept and dial connections. Keeping it this small means
// the Raft port can be wrapped in TLS (mutual TLS when the config asks for
// client certificates) without touching the transport, and the advertised
// address can differ from the bound one (NAT, 0.0.0.0 binds, :0 in tests).
package raftnet

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"
)

// ErrNoAdvertise is returned when the bind address is unspecified (0.0.0.0
// or ::) and no advertise address was given: other servers could not reach
// an address like that.
var ErrNoAdvertise = errors.New("raftnet: bind address is unspecified; an advertise address is required")

// Layer is a raft.StreamLayer over TCP with optional TLS.
type Layer struct {
	ln        net.Listener
	advertise net.Addr
	serverTLS *tls.Config
	clientTLS *tls.Config
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
	return &Layer{ln: ln, advertise: adv, serverTLS: cfg.ServerTLS, clientTLS: cfg.ClientTLS}, nil
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

// Accept waits for the next Raft connection and, with TLS, wraps it. The
// handshake runs on the first read, in raft's per-connection goroutine, so
// a slow or hostile peer cannot stall the accept loop.
func (l *Layer) Accept() (net.Conn, error) {
	c, err := l.ln.Accept()
	if err != nil {
		return nil, err
	}
	if l.serverTLS != nil {
		return tls.Server(c, l.serverTLS), nil
	}
	return c, nil
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
