package cluster

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/hashicorp/raft"
)

// Bootstrap and join run on every node: a fresh node bootstraps once the
// expected servers see each other in gossip, or waits to be added by a
// leader (reconcile, in leader.go) and stops gossiping as fresh once it
// has joined.

// membershipLoop bootstraps a fresh node once BootstrapExpect fresh
// servers are in gossip, and clears this node's fresh flag once it is part
// of the cluster: it bootstrapped and sees itself in its configuration, or
// it sees itself there and a leader has kept in touch with it for
// joinSettle (see joined); or once raft has shut down after removing it.
func (n *Node) membershipLoop(fresh bool) {
	defer n.wg.Done()
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	var since time.Time // when joined's conditions started to hold
	bootstrapped := false
	for fresh {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		// raft shuts down a leader that removed itself: it will not be
		// part of this cluster again, and must not look like a server
		// waiting to be added to the next leader, which does not know of
		// the removal.
		if n.raft.State() == raft.Shutdown {
			break
		}
		// A server that bootstrapped holds the configuration it wrote
		// itself; only a joiner's can come from a stale RPC.
		if bootstrapped && n.inConfiguration() {
			break
		}
		if !n.joined() {
			since = time.Time{}
		} else if since.IsZero() {
			since = time.Now()
		}
		if !since.IsZero() && time.Since(since) >= n.joinSettle() {
			break
		}
		if n.cfg.BootstrapExpect > 0 && !bootstrapped {
			bootstrapped = n.maybeBootstrap()
		}
	}
	if n.delegate.setFresh(false) {
		if err := n.ml.UpdateNode(time.Second); err != nil {
			n.log.Warn("gossip metadata update", "err", err)
		}
	}
}

// joined reports whether this node is in its own latest Raft
// configuration and either leads or heard from a leader within a
// heartbeat timeout. A configuration naming the node is not enough on its
// own: a server wiped and started again under the same ID and address can
// receive one last RPC from the leader's replication to its previous
// incarnation (raft's replication goroutine sleeps out a failure backoff of
// up to about 10 s without watching for the server's removal, then sends
// once more), and an InstallSnapshot then brings a configuration from
// before the removal. No leader replicates to the node after it, so the
// contact does not last; the node stays fresh and the leader adds it.
func (n *Node) joined() bool {
	if !n.inConfiguration() {
		return false
	}
	if n.raft.State() == raft.Leader {
		return true
	}
	addr, _ := n.raft.LeaderWithID()
	return addr != "" && time.Since(n.raft.LastContact()) < n.cfg.HeartbeatTimeout
}

// joinSettle is how long joined must hold before the node stops gossiping
// as fresh: twice the heartbeat timeout, so that a single stale RPC (whose
// contact lapses after one heartbeat timeout) never clears it, while a
// leader's heartbeats (ten per heartbeat timeout) keep it true.
func (n *Node) joinSettle() time.Duration { return 2 * n.cfg.HeartbeatTimeout }

// inConfiguration reports whether this node is in its own latest Raft
// configuration.
func (n *Node) inConfiguration() bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	servers, err := n.configuration(ctx)
	if err != nil {
		return false
	}
	for _, s := range servers {
		if string(s.ID) == n.cfg.NodeID {
			return true
		}
	}
	return false
}

// maybeBootstrap bootstraps Raft, and reports whether it did, when exactly the expected number of
// fresh servers, this one included, see each other and none of the alive
// members is already part of a cluster. Every such server computes the
// same configuration (all of them as voters, sorted by ID), so their
// bootstraps agree; a server that joins a running cluster sees a non-fresh
// member and waits for the leader to add it instead.
func (n *Node) maybeBootstrap() bool {
	var servers []raft.Server
	self := false
	for _, m := range n.members.all() {
		if m.state != "alive" || !n.proven(m) {
			continue
		}
		if !m.meta.Fresh {
			return false // a cluster exists; its leader will add us
		}
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(m.meta.ID), Address: raft.ServerAddress(m.meta.Raft)})
		if m.meta.ID == n.cfg.NodeID {
			self = true
		}
	}
	if !self || len(servers) < n.cfg.BootstrapExpect {
		return false
	}
	if len(servers) > n.cfg.BootstrapExpect {
		n.log.Warn("more fresh servers than bootstrap-expect; not bootstrapping, to avoid diverging configurations",
			"seen", len(servers), "expect", n.cfg.BootstrapExpect)
		return false
	}
	sort.Slice(servers, func(i, j int) bool { return servers[i].ID < servers[j].ID })
	ids := make([]string, len(servers))
	for i, s := range servers {
		ids[i] = fmt.Sprintf("%s@%s", s.ID, s.Address)
	}
	f := n.raft.BootstrapCluster(raft.Configuration{Servers: servers})
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.ApplyTimeout)
	defer cancel()
	err := n.await(ctx, f, n.cfg.ApplyTimeout)
	switch {
	case errors.Is(err, raft.ErrCantBootstrap):
		return false // raft already holds state: not this node's configuration
	case err != nil:
		n.log.Error("bootstrap failed", "err", err)
		return false
	}
	n.log.Info("bootstrapped raft", "servers", ids)
	return true
}
