package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
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
		n.bodies.buf.setLeading(leading) // the leader reads bodies for receives
		n.bodies.signal()
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
	checkpoints, stopCheckpoints := n.checkpoints() // logverify.go
	defer stopCheckpoints()
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
		case <-checkpoints:
			n.checkpoint(ctx)
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
