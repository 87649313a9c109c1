package raftnet

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// serve accepts on l until it closes and echoes each connection, the way
// raft's transport reads and answers.
func serve(l *Layer) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

// closedWithin reports whether the server closes c within d.
func closedWithin(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.ReadAll(c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return true
}

// dialFrom connects to addr from a chosen loopback source address, so a
// test can play a host other than the cluster's own.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestSilentConnectionsAreClosedAfterTheHandshakeTimeout(t *testing.T) {
	pool, cert := testCA(t)
	for _, tc := range []struct {
		name string
		tls  *tls.Config
	}{
		{"plain", nil},
		{"tls", &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Bind: "127.0.0.1:0", Limits: Limits{HandshakeTimeout: 300 * time.Millisecond, IdleTimeout: time.Minute}}
			if tc.tls != nil {
				cfg.ServerTLS, cfg.ClientTLS = tc.tls, tc.tls
			}
			l, err := Listen(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			go serve(l)
			c := dialFrom(t, "127.0.0.1", l.BoundAddr().String())
			start := time.Now()
			if !closedWithin(c, 5*time.Second) {
				t.Fatalf("a connection that sent nothing was still open after 5 s (handshake timeout 300 ms)")
			}
			if el := time.Since(start); el < 200*time.Millisecond {
				t.Fatalf("closed after %v, before the handshake timeout", el)
			}
			waitOpen(t, l, 0)
		})
	}
}

func TestIdleConnectionsAreClosedAfterTheIdleTimeout(t *testing.T) {
	l, err := Listen(Config{Bind: "127.0.0.1:0", Limits: Limits{HandshakeTimeout: 5 * time.Second, IdleTimeout: 400 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go serve(l)
	c := dialFrom(t, "127.0.0.1", l.BoundAddr().String())
	// Traffic more often than the idle timeout keeps the connection.
	buf := make([]byte, 1)
	for i := 0; i < 6; i++ {
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("echo %d on a busy connection: %v", i, err)
		}
		time.Sleep(150 * time.Millisecond)
	}
	if !closedWithin(c, 5*time.Second) {
		t.Fatal("an idle connection was still open 5 s after its last byte (idle timeout 400 ms)")
	}
	waitOpen(t, l, 0)
}

func TestConnectionsOverTheCapsAreClosedAtAccept(t *testing.T) {
	var mu sync.Mutex
	refused := map[string]int{}
	l, err := Listen(Config{Bind: "127.0.0.1:0", Limits: Limits{MaxConns: 6, MaxConnsPerIP: 4},
		OnRefused: func(r string) { mu.Lock(); refused[r]++; mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go serve(l)
	addr := l.BoundAddr().String()

	var held []net.Conn
	for i := 0; i < 4; i++ {
		held = append(held, dialFrom(t, "127.0.0.2", addr))
	}
	waitOpen(t, l, 4)
	if c := dialFrom(t, "127.0.0.2", addr); !closedWithin(c, 2*time.Second) {
		t.Fatal("a fifth connection from 127.0.0.2 was kept (4 per IP)")
	}
	// Another address still gets in, up to the total.
	for i := 0; i < 2; i++ {
		held = append(held, dialFrom(t, "127.0.0.3", addr))
	}
	waitOpen(t, l, 6)
	if c := dialFrom(t, "127.0.0.4", addr); !closedWithin(c, 2*time.Second) {
		t.Fatal("a seventh connection was kept (6 in total)")
	}
	mu.Lock()
	if refused["max-conns-per-ip"] != 1 || refused["max-conns"] != 1 {
		t.Fatalf("refusals counted %v, want one of each", refused)
	}
	mu.Unlock()

	// A closed connection frees its slot.
	held[0].Close()
	waitOpen(t, l, 5)
	c := dialFrom(t, "127.0.0.2", addr)
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("a connection in a freed slot got no echo: %v", err)
	}
}

func waitOpen(t *testing.T, l *Layer, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for l.OpenConns() != want {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections open, want %d", l.OpenConns(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A connection from an IP that AllowPeer refuses is closed at accept and
// counted as "not-a-peer"; one from an allowed IP is served.
func TestConnectionsFromRefusedPeersAreClosedAtAccept(t *testing.T) {
	var mu sync.Mutex
	var reasons []string
	l, err := Listen(Config{
		Bind:      "127.0.0.1:0",
		AllowPeer: func(ip net.IP) bool { return ip.Equal(net.ParseIP("127.0.0.1")) },
		OnRefused: func(reason string) { mu.Lock(); reasons = append(reasons, reason); mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go serve(l)

	stranger := dialFrom(t, "127.0.0.2", l.BoundAddr().String())
	if !closedWithin(stranger, 2*time.Second) {
		t.Fatal("a connection from 127.0.0.2 was still open after 2 s; AllowPeer refuses it")
	}
	peer := dialFrom(t, "127.0.0.1", l.BoundAddr().String())
	if _, err := peer.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	peer.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadFull(peer, make([]byte, 1)); err != nil {
		t.Fatalf("a connection from 127.0.0.1 was not served: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reasons) != 1 || reasons[0] != "not-a-peer" {
		t.Fatalf("refusals %v, want one not-a-peer", reasons)
	}
}
