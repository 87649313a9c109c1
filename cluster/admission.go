package cluster

import (
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Gossip is how servers find each other, and anyone who reaches the gossip
// port can join it and publish any metadata. So being in gossip is not
// proof of being a server of this cluster: before a member counts for a
// bootstrap or is added as a voter, it must have proved it, in one of two
// ways.
//
//   - Gossip key: memberlist drops every packet not sealed with the key, so
//     every member holds it.
//   - Raft mutual TLS: the member's Raft port presents a certificate that the
//     cluster's CA signed and that names the member's node ID (its Common
//     Name or a DNS name), as `quorumq tls cert --name ID` writes it.
//
// A cluster with neither admits every member, which is only acceptable
// where nothing else is protected either (`quorumq dev`, loopback tests):
// Config refuses Raft TLS or API tokens without one of the two, since a
// voter let in through gossip would get around both.
type admission int

const (
	admitAnyone admission = iota
	admitGossipKey
	admitCertificate
)

func (c Config) admission() admission {
	switch {
	case len(c.GossipKey) > 0:
		return admitGossipKey
	case c.RaftServerTLS != nil && c.RaftServerTLS.ClientAuth == tls.RequireAndVerifyClientCert:
		return admitCertificate
	}
	return admitAnyone
}

// checkAdmission refuses a configuration that protects the Raft port or the
// API but lets anyone in through gossip.
func (c Config) checkAdmission() error {
	if c.admission() != admitAnyone {
		return nil
	}
	var protected string
	switch {
	case c.RaftServerTLS != nil:
		protected = "Raft TLS without client certificates"
	case len(c.tokens()) > 0:
		protected = "API tokens"
	default:
		return nil
	}
	return configErr("%s protect nothing while anyone who reaches the gossip port can become a Raft voter: "+
		"set a gossip key (--gossip-key), or mutual TLS on the Raft port (--tls-ca with --tls-cert and --tls-key) so members prove their node ID with a certificate", protected)
}

// exposures lists the cluster ports that run in the clear on an address
// other hosts can reach, each with what an attacker there could do.
func (c Config) exposures() []string {
	var out []string
	if c.RaftServerTLS == nil && !loopbackOnly(c.RaftAddr) {
		out = append(out, fmt.Sprintf("Raft address %s is reachable from other hosts and Raft has no TLS: anyone who reaches it can send Raft messages; set --tls-cert, --tls-key and --tls-ca", c.RaftAddr))
	}
	if len(c.GossipKey) == 0 && !loopbackOnly(c.GossipAddr) {
		out = append(out, fmt.Sprintf("gossip address %s is reachable from other hosts and gossip has no key: anyone who reaches it can join; set --gossip-key", c.GossipAddr))
	}
	return out
}

// checkExposure refuses cluster ports in the clear off loopback unless the
// operator chose it (InsecureCluster).
func (c Config) checkExposure() error {
	if ex := c.exposures(); len(ex) > 0 && !c.InsecureCluster {
		return configErr("%s, or --insecure-cluster to run it in the clear", ex[0])
	}
	return nil
}

// loopbackOnly reports whether a bind address host:port listens on a
// loopback address only.
func loopbackOnly(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// proofCache remembers the certificate checks of members, so that the
// leader's reconcile (every second) does not dial a member each time.
type proofCache struct {
	mu      sync.Mutex
	results map[string]proof // by id/boot/raft address
}

type proof struct {
	err error
	at  time.Time
}

// proofRetry is how long a failed proof stands before the member is
// dialed again.
const proofRetry = 10 * time.Second

// proven reports whether gossip member m proved that it is a server of this
// cluster; the reason it did not is logged once per failed check.
func (n *Node) proven(m member) bool {
	if m.meta.ID == n.cfg.NodeID {
		return true
	}
	if n.cfg.admission() != admitCertificate {
		return true
	}
	key := m.meta.ID + "/" + m.meta.Boot + "/" + m.meta.Raft
	n.proofs.mu.Lock()
	p, ok := n.proofs.results[key]
	n.proofs.mu.Unlock()
	if ok && (p.err == nil || time.Since(p.at) < proofRetry) {
		return p.err == nil
	}
	err := n.proveByCertificate(m)
	n.proofs.mu.Lock()
	if n.proofs.results == nil {
		n.proofs.results = map[string]proof{}
	}
	n.proofs.results[key] = proof{err: err, at: time.Now()}
	n.proofs.mu.Unlock()
	if err != nil {
		n.log.Warn("gossip member did not prove it is a server of this cluster; not counting it", "id", m.meta.ID, "gossip", m.gossip, "err", err)
	}
	return err == nil
}

// proveByCertificate dials m's Raft port with this node's Raft TLS client
// config (which verifies the chain against the cluster CA) and checks that
// the certificate names m's node ID.
func (n *Node) proveByCertificate(m member) error {
	conn, err := n.raftLayer.Dial(raft.ServerAddress(m.meta.Raft), 5*time.Second)
	if err != nil {
		return fmt.Errorf("TLS to its Raft address %s: %w", m.meta.Raft, err)
	}
	defer conn.Close()
	tc, ok := conn.(*tls.Conn)
	if !ok {
		return fmt.Errorf("the connection to Raft address %s is not TLS", m.meta.Raft)
	}
	st := tc.ConnectionState()
	if len(st.VerifiedChains) == 0 || len(st.PeerCertificates) == 0 {
		return fmt.Errorf("the Raft port %s presented no certificate signed by the cluster CA", m.meta.Raft)
	}
	leaf := st.PeerCertificates[0]
	if leaf.Subject.CommonName == m.meta.ID || slices.Contains(leaf.DNSNames, m.meta.ID) {
		return nil
	}
	return fmt.Errorf("the certificate of Raft port %s names %q (DNS names %v), not node ID %q",
		m.meta.Raft, leaf.Subject.CommonName, leaf.DNSNames, m.meta.ID)
}
