package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/hashicorp/raft"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// leaderLoop follows this node's leadership. On winning an election it
// waits on a barrier (every entry of earlier terms applied) before marking
// itself ready to serve reads and long polls; while leader it proposes the
// periodic tick and adds fresh servers seen in gossip.
func (n *Node) leaderLoop() {
	defer n.wg.Done()
	var (
		leading  bool
		stopLead = func() {}
	)
	defer func() { stopLead() }()
	check := time.NewTicker(200 * time.Millisecond)
	defer check.Stop()
	for {
		// LeaderCh can drop edges under churn (it is buffered by one), so
		// the state is also polled.
		select {
		case <-n.stop:
			n.ready.Store(false)
			return
		case <-n.raft.LeaderCh():
		case <-check.C:
		}
		isLeader := n.raft.State() == raft.Leader
		if isLeader == leading {
			continue
		}
		leading = isLeader
		stopLead()
		n.ready.Store(false)
		if !leading {
			n.log.Info("lost leadership")
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		stopLead = cancel
		n.wg.Add(1)
		go n.lead(ctx)
	}
}

// lead runs for one term of leadership, until ctx is canceled.
func (n *Node) lead(ctx context.Context) {
	defer n.wg.Done()
	start := time.Now()
	for {
		err := n.await(ctx, n.raft.Barrier(n.cfg.ApplyTimeout), n.cfg.ApplyTimeout)
		if err == nil {
			break
		}
		if ctx.Err() != nil || errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrRaftShutdown) {
			return
		}
		n.log.Warn("leader barrier failed; retrying", "err", err)
	}
	n.ready.Store(true)
	n.log.Info("leader ready", "term", n.raft.Stats()["term"], "after", time.Since(start).Round(time.Millisecond))
	n.reconcile(ctx)

	tick := time.NewTicker(n.cfg.TickInterval)
	defer tick.Stop()
	reconcile := time.NewTicker(time.Second)
	defer reconcile.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			tctx, c := context.WithTimeout(ctx, n.cfg.ApplyTimeout)
			if _, err := n.Propose(tctx, &fsmpb.Command{Op: &fsmpb.Command_Tick{Tick: &fsmpb.Tick{}}}); err != nil && ctx.Err() == nil {
				n.log.Debug("tick not applied", "err", err)
			}
			c()
		case <-n.members.changed:
			n.reconcile(ctx)
		case <-reconcile.C:
			n.reconcile(ctx)
		}
	}
}

// configuration returns the latest Raft configuration (committed or not).
func (n *Node) configuration(ctx context.Context) ([]raft.Server, error) {
	f := n.raft.GetConfiguration()
	if err := n.await(ctx, f, n.cfg.ApplyTimeout); err != nil {
		return nil, err
	}
	return f.Configuration().Servers, nil
}

// reconcile adds every alive, fresh gossip member that is not yet in the
// Raft configuration as a voter. Servers are never removed here: a dead
// server may come back, and removal changes the quorum size, so it is an
// operator's decision (RemoveServer).
func (n *Node) reconcile(ctx context.Context) {
	servers, err := n.configuration(ctx)
	if err != nil {
		return
	}
	inConfig := map[string]bool{}
	for _, s := range servers {
		inConfig[string(s.ID)] = true
	}
	for _, m := range n.members.all() {
		if m.state != "alive" || !m.meta.Fresh || inConfig[m.meta.ID] || n.isRemoved(m.meta.ID, m.meta.Boot) || !n.proven(m) {
			continue
		}
		if missing := missingFeatures(m.meta.Features); len(missing) > 0 {
			// It would replay log entries that use these features
			// without knowing them, and its state would differ.
			if _, warned := n.olderWarned.LoadOrStore(m.meta.ID+"/"+m.meta.Boot, true); !warned {
				n.log.Warn("not adding server: it runs an older release; start it with this one", "id", m.meta.ID, "missing_log_features", missing)
			}
			continue
		}
		n.log.Info("adding server", "id", m.meta.ID, "raft", m.meta.Raft)
		f := n.raft.AddVoter(raft.ServerID(m.meta.ID), raft.ServerAddress(m.meta.Raft), 0, n.cfg.ApplyTimeout)
		if err := n.await(ctx, f, n.cfg.ApplyTimeout); err != nil {
			n.log.Warn("adding server failed", "id", m.meta.ID, "err", err)
			return
		}
	}
}

// isRemoved reports whether server id, in the process that gossips boot,
// was removed by an admin on this leader.
func (n *Node) isRemoved(id, boot string) bool {
	n.removedMu.Lock()
	defer n.removedMu.Unlock()
	b, ok := n.removed[id]
	return ok && b == boot
}

// newBootID returns a random ID for this process start.
func newBootID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// membershipLoop bootstraps a fresh node once BootstrapExpect fresh
// servers are in gossip, and clears this node's fresh flag once it has
// joined: it sees itself in its Raft configuration and a leader has kept
// in touch with it for joinSettle (see joined).
func (n *Node) membershipLoop(fresh bool) {
	defer n.wg.Done()
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	var since time.Time // when joined's conditions started to hold
	for fresh {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		if !n.joined() {
			since = time.Time{}
		} else if since.IsZero() {
			since = time.Now()
		}
		if !since.IsZero() && time.Since(since) >= n.joinSettle() {
			fresh = false
			break
		}
		if n.cfg.BootstrapExpect > 0 {
			n.maybeBootstrap()
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

// maybeBootstrap bootstraps Raft when exactly the expected number of
// fresh servers, this one included, see each other and none of the alive
// members is already part of a cluster. Every such server computes the
// same configuration (all of them as voters, sorted by ID), so their
// bootstraps agree; a server that joins a running cluster sees a non-fresh
// member and waits for the leader to add it instead.
func (n *Node) maybeBootstrap() {
	var servers []raft.Server
	self := false
	for _, m := range n.members.all() {
		if m.state != "alive" || !n.proven(m) {
			continue
		}
		if !m.meta.Fresh {
			return // a cluster exists; its leader will add us
		}
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(m.meta.ID), Address: raft.ServerAddress(m.meta.Raft)})
		if m.meta.ID == n.cfg.NodeID {
			self = true
		}
	}
	if !self || len(servers) < n.cfg.BootstrapExpect {
		return
	}
	if len(servers) > n.cfg.BootstrapExpect {
		n.log.Warn("more fresh servers than bootstrap-expect; not bootstrapping, to avoid diverging configurations",
			"seen", len(servers), "expect", n.cfg.BootstrapExpect)
		return
	}
	sort.Slice(servers, func(i, j int) bool { return servers[i].ID < servers[j].ID })
	ids := make([]string, len(servers))
	for i, s := range servers {
		ids[i] = fmt.Sprintf("%s@%s", s.ID, s.Address)
	}
	f := n.raft.BootstrapCluster(raft.Configuration{Servers: servers})
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.ApplyTimeout)
	defer cancel()
	if err := n.await(ctx, f, n.cfg.ApplyTimeout); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		n.log.Error("bootstrap failed", "err", err)
		return
	}
	n.log.Info("bootstrapped raft", "servers", ids)
}
