package cluster

import (
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// Without mutual TLS the Raft port cannot authenticate a peer, and raft
// itself believes every AppendEntries it is sent: one with a higher term
// from anyone who reaches the port moves a follower's term and writes its
// entries to the follower's log, which then differs from the others' for
// good. raft checks the sender only for votes (a candidate outside the
// configuration gets none).
//
// raftPeers is what the node can check instead, in two places:
//
//   - At accept (raftnet's AllowPeer): the connection's remote IP must be
//     an IP of a known server: its Raft address in the configuration, or
//     the Raft or gossip address it publishes in gossip.
//   - Per RPC (memberTransport, before raft sees it, heartbeats included):
//     the sender's ID and address in the RPC header must be a known server
//     other than this node, at one of its Raft addresses.
//
// Known servers are those of the latest configuration raft reports
// (entries not yet committed included), plus alive gossip members: a
// leader added while this node was behind is in gossip before this node
// has the entry that adds it, and without gossip members this node would
// refuse the AppendEntries that bring it that entry. Gossip is protected
// by the gossip key, if any; without one, anyone who joins gossip is made
// a voter anyway (admission.go), so trusting its members opens nothing new.
//
// A node with an empty configuration (fresh, waiting to bootstrap or to be
// added) takes every peer: the leader that adds it is not known to it
// until its first AppendEntries brings the configuration.
//
// What cannot be told apart: a host that shares a server's IP (one host
// running several servers, `quorumq dev`, loopback tests) and copies that
// server's ID and Raft address into its headers. The check then holds only
// against a sender that names itself, as raft's own transport does.
type raftPeers struct {
	self    string
	raft    atomic.Pointer[raft.Raft] // nil until raft runs: every peer is taken
	members *members

	onRefusedRPC func(rpc string)
	warned       sync.Map // refusals already logged, by their text
	warn         func(msg string, args ...any)

	// recent is the last view built and when, so that the RPCs of known
	// servers (every append and heartbeat) do not each build one; a
	// sender it does not know is checked against a fresh view.
	recent atomic.Pointer[timedView]
}

type timedView struct {
	peerView
	at time.Time
}

// recentFor is how long a view serves the check of a sender it knows.
const recentFor = time.Second

// checksRaftPeers reports whether the node checks Raft peers itself: only
// when the Raft port does not require client certificates of the CA.
func (c Config) checksRaftPeers() bool {
	return c.RaftServerTLS == nil || c.RaftServerTLS.ClientAuth != tls.RequireAndVerifyClientCert
}

// peerView is a snapshot of the known servers.
type peerView struct {
	open bool                // no configuration: every peer is taken
	raft map[string][]string // server ID → Raft addresses it may send from
	ips  []net.IP            // IPs of every known server's addresses
}

func (p *raftPeers) view() peerView {
	r := p.raft.Load()
	if r == nil {
		return peerView{open: true}
	}
	servers := r.GetConfiguration().Configuration().Servers
	if len(servers) == 0 {
		return peerView{open: true}
	}
	v := peerView{raft: map[string][]string{}}
	addIP := func(addr string) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return
		}
		// Raft and gossip addresses are IP literals: raftnet and
		// memberlist resolve advertised names at start.
		if ip := net.ParseIP(host); ip != nil && !slices.ContainsFunc(v.ips, ip.Equal) {
			v.ips = append(v.ips, ip)
		}
	}
	add := func(id, raftAddr, gossip string) {
		if raftAddr != "" && !slices.Contains(v.raft[id], raftAddr) {
			v.raft[id] = append(v.raft[id], raftAddr)
			addIP(raftAddr)
		}
		if gossip != "" {
			addIP(gossip)
		}
	}
	for _, s := range servers {
		add(string(s.ID), string(s.Address), "")
	}
	for _, m := range p.members.all() {
		if m.state == "alive" || slices.ContainsFunc(servers, func(s raft.Server) bool { return string(s.ID) == m.meta.ID }) {
			add(m.meta.ID, m.meta.Raft, m.gossip)
		}
	}
	return v
}

// allowIP is raftnet's AllowPeer: whether a connection from ip may be a
// known server's.
func (p *raftPeers) allowIP(ip net.IP) bool {
	v := p.view()
	return v.open || slices.ContainsFunc(v.ips, ip.Equal)
}

// check returns why rpc is refused, or nil when its sender is a known
// server. A view up to recentFor old may admit a sender (a server removed
// since may still be taken for that long, as raft itself does until the
// removal reaches this node); only a fresh one refuses.
func (p *raftPeers) check(rpc raft.RPC) error {
	h, ok := rpc.Command.(raft.WithRPCHeader)
	if !ok {
		return fmt.Errorf("raft RPC %T carries no header naming its sender", rpc.Command)
	}
	id, addr := string(h.GetRPCHeader().ID), string(h.GetRPCHeader().Addr)
	known := func(v peerView) bool { return v.open || id != p.self && slices.Contains(v.raft[id], addr) }
	if r := p.recent.Load(); r != nil && time.Since(r.at) < recentFor && known(r.peerView) {
		return nil
	}
	v := p.view()
	p.recent.Store(&timedView{peerView: v, at: time.Now()})
	if known(v) {
		return nil
	}
	return fmt.Errorf("raft RPC refused: sender %q at %q is not a server of %s's configuration", id, addr, p.self)
}

// admit answers rpc with the refusal and counts it when check refuses it.
func (p *raftPeers) admit(rpc raft.RPC) bool {
	err := p.check(rpc)
	if err == nil {
		return true
	}
	name := rpcName(rpc)
	p.onRefusedRPC(name)
	key := err.Error()
	if _, seen := p.warned.LoadOrStore(key, true); !seen {
		p.warn("refusing Raft RPCs from a sender that is not a server of this cluster (logged once per sender)", "rpc", name, "err", err)
	}
	rpc.Respond(nil, err)
	return false
}

func rpcName(rpc raft.RPC) string {
	switch r := rpc.Command.(type) {
	case *raft.AppendEntriesRequest:
		if len(r.Entries) == 0 && r.PrevLogEntry == 0 && r.LeaderCommitIndex == 0 {
			return "heartbeat"
		}
		return "append_entries"
	case *raft.RequestVoteRequest:
		return "request_vote"
	case *raft.RequestPreVoteRequest:
		return "request_pre_vote"
	case *raft.InstallSnapshotRequest:
		return "install_snapshot"
	case *raft.TimeoutNowRequest:
		return "timeout_now"
	}
	return "other"
}

// memberTransport is the transport raft sees when the node checks Raft
// peers itself: every inbound RPC, the heartbeat fast path included, goes
// through raftPeers.admit before raft handles it.
type memberTransport struct {
	drainedTransport
	peers *raftPeers
	rpcs  chan raft.RPC
}

func newMemberTransport(t drainedTransport, peers *raftPeers, stop <-chan struct{}) *memberTransport {
	m := &memberTransport{drainedTransport: t, peers: peers, rpcs: make(chan raft.RPC)}
	go m.forward(stop)
	return m
}

func (m *memberTransport) forward(stop <-chan struct{}) {
	in := m.drainedTransport.Consumer()
	for {
		select {
		case rpc := <-in:
			if !m.peers.admit(rpc) {
				continue
			}
			select {
			case m.rpcs <- rpc:
			case <-stop:
				return
			}
		case <-stop:
			return
		}
	}
}

// Consumer implements raft.Transport.
func (m *memberTransport) Consumer() <-chan raft.RPC { return m.rpcs }

// SetHeartbeatHandler implements raft.Transport.
func (m *memberTransport) SetHeartbeatHandler(cb func(raft.RPC)) {
	if cb == nil {
		m.drainedTransport.SetHeartbeatHandler(nil)
		return
	}
	m.drainedTransport.SetHeartbeatHandler(func(rpc raft.RPC) {
		if m.peers.admit(rpc) {
			cb(rpc)
		}
	})
}
