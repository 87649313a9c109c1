package cluster

import (
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// rogueAgent joins the cluster's gossip as a memberlist agent that
// publishes meta, the way anyone who reaches the gossip port can.
func rogueAgent(t *testing.T, meta nodeMeta, join string) {
	t.Helper()
	mc := memberlist.DefaultLocalConfig()
	mc.Name = meta.ID
	mc.BindAddr, mc.BindPort = "127.0.0.1", 0
	mc.Delegate = &metaDelegate{meta: meta}
	mc.LogOutput = io.Discard
	ml, err := memberlist.Create(mc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ml.Shutdown() })
	if _, err := ml.Join([]string{join}); err != nil {
		t.Fatalf("rogue %s joins gossip: %v", meta.ID, err)
	}
}

// tlsPort serves TLS handshakes with cert on a loopback port and returns
// its address.
func tlsPort(t *testing.T, cert tls.Certificate) string {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.(*tls.Conn).Handshake()
			conn.Close()
		}
	}()
	return ln.Addr().String()
}

// With mutual TLS on the Raft port and no gossip key, agents that join the
// gossip and claim to be fresh servers are not made voters unless their
// Raft port proves their node ID with a certificate of the cluster's CA;
// a real server with such a certificate still is.
func TestRogueGossipMembersAreNotMadeVoters(t *testing.T) {
	pki := newTestPKI(t)
	c := StartTestClusterWith(t, 3, func(_ int, cfg *Config) { pki.secure(t, cfg) })
	leader := c.Leader(t)

	// rogue-cert: a TLS port with a certificate of a CA the cluster does
	// not trust, named as the rogue claims. rogue-misnamed: a certificate
	// of the cluster's CA that names another node.
	foreign := newTestPKI(t)
	rogueCert := tlsPort(t, foreign.cert(t, "rogue-cert"))
	misnamed := tlsPort(t, pki.cert(t, "n9"))
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	rogues := []nodeMeta{
		{ID: "rogue-cert", Raft: rogueCert},
		{ID: "rogue-closed", Raft: closedAddr},
		{ID: "rogue-misnamed", Raft: misnamed},
	}
	for _, m := range rogues {
		m.API, m.Fresh, m.Boot, m.Features = "127.0.0.1:1", true, "boot-"+m.ID, supportedFeatures
		rogueAgent(t, m, leader.GossipAddr())
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		alive := 0
		for _, m := range leader.members.all() {
			if strings.HasPrefix(m.meta.ID, "rogue-") && m.state == "alive" {
				alive++
			}
		}
		if alive == len(rogues) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the leader sees %d of %d rogue agents in gossip after 10 s", alive, len(rogues))
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(4 * time.Second) // the leader reconciles every second

	servers, err := leader.configuration(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range servers {
		if strings.HasPrefix(string(s.ID), "rogue-") {
			t.Fatalf("rogue gossip member %s@%s is in the Raft configuration %v", s.ID, s.Address, servers)
		}
	}
	if got := c.Leader(t); got != leader {
		t.Fatalf("leadership moved from %s to %s while rogue agents were in gossip", leader.ID(), got.ID())
	}
	conn, err := grpc.NewClient(leader.APIAddr(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pki.pool})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := &quorumqpb.EnqueueRequest{Queue: "q", Messages: []*fsmpb.Message{{Body: []byte("still serving")}}}
	if _, err := quorumqpb.NewQueueClient(conn).Enqueue(ctxT(t, 10*time.Second), req); err != nil {
		t.Fatalf("enqueue with rogue agents in gossip: %v", err)
	}

	// A server whose certificate names its ID is added as before.
	i := c.Add(t)
	deadline = time.Now().Add(15 * time.Second)
	for {
		servers, err := leader.configuration(ctxT(t, 10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if len(servers) == 4 && string(servers[3].ID) == c.Nodes[i].ID() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("n4 with a certificate naming it was not added within 15 s: %v", servers)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestProtectionWithoutAdmissionIsRefused(t *testing.T) {
	pki := newTestPKI(t)
	base := Config{NodeID: "n1", DataDir: t.TempDir(), APIAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0"}

	tokens := base
	pki.secure(t, &tokens)
	tokens.RaftServerTLS, tokens.RaftClientTLS = nil, nil
	tokens.AuthTokens = []Token{{Secret: "admin-token-0123456789", Scope: ScopeAdmin}}
	if _, err := tokens.withDefaults(); err == nil || !strings.Contains(err.Error(), "API tokens protect nothing while anyone who reaches the gossip port can become a Raft voter: set a gossip key (--gossip-key)") {
		t.Fatalf("API tokens without a gossip key or Raft mTLS: %v", err)
	}
	oneWay := base
	pki.secure(t, &oneWay)
	oneWay.RaftServerTLS.ClientAuth = tls.NoClientCert
	if _, err := oneWay.withDefaults(); err == nil || !strings.Contains(err.Error(), "Raft TLS without client certificates protect nothing") {
		t.Fatalf("Raft TLS without client certificates and no gossip key: %v", err)
	}
	keyed := oneWay
	keyed.GossipKey = make([]byte, 32)
	if _, err := keyed.withDefaults(); err != nil {
		t.Fatalf("the same with a gossip key: %v", err)
	}
	if _, err := base.withDefaults(); err != nil {
		t.Fatalf("nothing protected (the dev setup): %v", err)
	}
}

// Plain Raft or gossip on an address other hosts can reach is a choice the
// operator states (InsecureCluster), not what a missing flag gives them.
func TestPlainClusterPortsOffLoopbackNeedInsecureCluster(t *testing.T) {
	base := Config{NodeID: "n1", DataDir: t.TempDir(), APIAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0"}
	if _, err := base.withDefaults(); err != nil {
		t.Fatalf("plain ports on loopback: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"raft on 0.0.0.0", func(c *Config) { c.RaftAddr = "0.0.0.0:7201" },
			"Raft address 0.0.0.0:7201 is reachable from other hosts and Raft has no TLS: anyone who reaches it can send Raft messages; set --tls-cert, --tls-key and --tls-ca, or --insecure-cluster to run it in the clear"},
		{"gossip on 10.1.2.3", func(c *Config) { c.GossipAddr = "10.1.2.3:7301" },
			"gossip address 10.1.2.3:7301 is reachable from other hosts and gossip has no key: anyone who reaches it can join; set --gossip-key, or --insecure-cluster to run it in the clear"},
	} {
		cfg := base
		tc.change(&cfg)
		if _, err := cfg.withDefaults(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
		cfg.InsecureCluster = true
		if _, err := cfg.withDefaults(); err != nil {
			t.Errorf("%s with InsecureCluster: %v", tc.name, err)
		}
	}
}
