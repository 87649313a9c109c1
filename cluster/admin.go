package cluster

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/transport/quorumqpb"
	"github.com/quorumq/quorumq/transport/wire"
)

// clusterService is the gRPC Cluster service of one node.
type clusterService struct {
	quorumqpb.UnimplementedClusterServer
	n *Node
}

func (c *clusterService) register(s grpc.ServiceRegistrar) { quorumqpb.RegisterClusterServer(s, c) }

// NodeStatus reports this node only.
func (c *clusterService) NodeStatus(ctx context.Context, _ *quorumqpb.NodeStatusRequest) (*quorumqpb.NodeStatusResponse, error) {
	return &quorumqpb.NodeStatusResponse{Node: c.n.localStatus(ctx)}, nil
}

// localStatus reads this node's role, term and indices from raft.
func (n *Node) localStatus(ctx context.Context) *quorumqpb.NodeStatus {
	stats := n.raft.Stats()
	u := func(k string) uint64 { v, _ := strconv.ParseUint(stats[k], 10, 64); return v }
	st := &quorumqpb.NodeStatus{
		Id:           n.cfg.NodeID,
		ApiAddr:      n.apiAddr,
		RaftAddr:     n.raftAdv,
		State:        n.raft.State().String(),
		Term:         u("term"),
		LastLogIndex: u("last_log_index"),
		CommitIndex:  u("commit_index"),
		AppliedIndex: n.fsm.AppliedIndex(),
		StateHash:    n.fsm.StateHash(),
	}
	st.LogRangesVerified, st.LogReadMismatches, st.LogWriteMismatches, st.LogVerifyError = n.verify.counts()
	if d := n.disk.read(); d.err != nil {
		st.DiskError = d.err.Error()
	} else {
		st.DiskFreeBytes, st.DiskSizeBytes = uint64(max(d.free, 0)), uint64(max(d.size, 0))
	}
	st.Version = buildVersion()
	if n.raft.State() != raft.Leader {
		if lc := n.raft.LastContact(); !lc.IsZero() {
			st.LastContactNs = int64(time.Since(lc))
		}
	}
	_, lid := n.raft.LeaderWithID()
	st.LeaderId = string(lid)
	if n.raft.State() == raft.Leader {
		st.ClockOffsets = n.clockOffsets()
	}
	if servers, err := n.configuration(ctx); err == nil {
		for _, s := range servers {
			if string(s.ID) == n.cfg.NodeID {
				st.Voter = s.Suffrage == raft.Voter
			}
		}
	}
	return st
}

// Status collects NodeStatus from every server in the Raft configuration
// and every gossip member, in parallel with a short timeout each; a node
// that does not answer is listed with error set.
func (c *clusterService) Status(ctx context.Context, _ *quorumqpb.StatusRequest) (*quorumqpb.StatusResponse, error) {
	n := c.n
	type target struct{ id, api, raftAddr string }
	seen := map[string]int{}
	var targets []target
	for _, m := range n.members.all() {
		if m.state == "left" {
			continue
		}
		seen[m.meta.ID] = len(targets)
		targets = append(targets, target{m.meta.ID, m.meta.API, m.meta.Raft})
	}
	if servers, err := n.configuration(ctx); err == nil {
		for _, s := range servers {
			if _, ok := seen[string(s.ID)]; !ok {
				seen[string(s.ID)] = len(targets)
				targets = append(targets, target{id: string(s.ID), raftAddr: string(s.Address)})
			}
		}
	}
	out := make([]*quorumqpb.NodeStatus, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		if t.id == n.cfg.NodeID {
			out[i] = n.localStatus(ctx)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = n.remoteStatus(ctx, t.id, t.api, t.raftAddr)
		}()
	}
	wg.Wait()
	leaderClockView(out)
	id, addr := n.leaderHint()
	return &quorumqpb.StatusResponse{Nodes: out, LeaderId: id, LeaderApiAddr: addr}, nil
}

// leaderClockView sets every node's clock_offset_ns from the clock
// offsets the leader (the one with the highest term, if two say so)
// measured: the leader's view is the one cluster time follows.
func leaderClockView(nodes []*quorumqpb.NodeStatus) {
	var leader *quorumqpb.NodeStatus
	for _, st := range nodes {
		if st.GetState() == raft.Leader.String() && (leader == nil || st.GetTerm() > leader.GetTerm()) {
			leader = st
		}
	}
	offsets := map[string]int64{}
	for _, o := range leader.GetClockOffsets() {
		offsets[o.GetId()] = o.GetOffsetNs()
	}
	for _, st := range nodes {
		if off, ok := offsets[st.GetId()]; ok {
			st.ClockOffsetNs = &off
		}
	}
}

func (n *Node) remoteStatus(ctx context.Context, id, api, raftAddr string) *quorumqpb.NodeStatus {
	failed := func(err error) *quorumqpb.NodeStatus {
		return &quorumqpb.NodeStatus{Id: id, ApiAddr: api, RaftAddr: raftAddr, Error: err.Error()}
	}
	if api == "" {
		return failed(errors.New("API address unknown: the server is in the Raft configuration but not in gossip"))
	}
	creds := insecure.NewCredentials()
	if n.cfg.APIClientTLS != nil {
		creds = credentials.NewTLS(n.cfg.APIClientTLS)
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if tok := n.cfg.peerToken(); tok != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(tok)))
	}
	conn, err := grpc.NewClient(api, opts...)
	if err != nil {
		return failed(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, n.cfg.StatusTimeout)
	defer cancel()
	resp, err := quorumqpb.NewClusterClient(conn).NodeStatus(ctx, &quorumqpb.NodeStatusRequest{})
	if err != nil {
		return failed(err)
	}
	return resp.GetNode()
}

// Members lists gossip members with their Raft suffrage.
func (c *clusterService) Members(ctx context.Context, _ *quorumqpb.MembersRequest) (*quorumqpb.MembersResponse, error) {
	n := c.n
	suffrage := map[string]string{}
	if servers, err := n.configuration(ctx); err == nil {
		for _, s := range servers {
			suffrage[string(s.ID)] = map[raft.ServerSuffrage]string{raft.Voter: "voter", raft.Nonvoter: "nonvoter", raft.Staging: "staging"}[s.Suffrage]
		}
	}
	resp := &quorumqpb.MembersResponse{}
	for _, m := range n.members.all() {
		resp.Members = append(resp.Members, &quorumqpb.Member{
			Id: m.meta.ID, ApiAddr: m.meta.API, RaftAddr: m.meta.Raft, GossipAddr: m.gossip,
			State: m.state, RaftSuffrage: suffrage[m.meta.ID],
		})
	}
	return resp, nil
}

// Leader names the leader this node knows.
func (c *clusterService) Leader(_ context.Context, _ *quorumqpb.LeaderRequest) (*quorumqpb.LeaderResponse, error) {
	id, addr := c.n.leaderHint()
	term, _ := strconv.ParseUint(c.n.raft.Stats()["term"], 10, 64)
	return &quorumqpb.LeaderResponse{LeaderId: id, LeaderApiAddr: addr, Term: term}, nil
}

// RemoveServer removes a server from the Raft configuration. Only the
// leader does it; the removed server is not added back automatically,
// even while it keeps running (wipe its data dir and start it again to
// rejoin it: that is a new boot, and the leader adds it).
func (c *clusterService) RemoveServer(ctx context.Context, req *quorumqpb.RemoveServerRequest) (*quorumqpb.RemoveServerResponse, error) {
	if err := c.n.RemoveServer(ctx, req.GetId()); err != nil {
		return nil, err
	}
	return &quorumqpb.RemoveServerResponse{}, nil
}

// RemoveServer removes server id from the Raft configuration; see the
// Cluster service's RemoveServer.
func (n *Node) RemoveServer(ctx context.Context, id string) error {
	if id == "" {
		return status.Error(codes.InvalidArgument, "id: empty; name the server to remove")
	}
	if n.raft.State() != raft.Leader {
		return n.notLeader()
	}
	servers, err := n.configuration(ctx)
	if err != nil {
		return status.Errorf(codes.Unavailable, "read configuration: %v", err)
	}
	found := false
	for _, s := range servers {
		found = found || string(s.ID) == id
	}
	if !found {
		return status.Errorf(codes.NotFound, "id: server %q is not in the Raft configuration", id)
	}
	boot := ""
	if m, ok := n.members.get(id); ok {
		boot = m.meta.Boot
	}
	n.removedMu.Lock()
	n.removed[id] = boot
	n.removedMu.Unlock()
	timeout := n.timeoutFor(ctx)
	var f raft.Future = n.raft.RemoveServer(raft.ServerID(id), 0, timeout)
	if id == n.cfg.NodeID {
		f = n.selfRemoval(f)
	}
	if err := n.await(ctx, f, timeout); err != nil {
		if errors.Is(err, raft.ErrNotLeader) {
			return n.notLeader()
		}
		return wire.OutcomeUnknownError(fmt.Sprintf("remove server %s: %v", id, err))
	}
	n.log.Info("removed server", "id", id)
	return nil
}

// selfRemoval is the future of a leader's removal of itself. raft shuts a
// leader down as soon as the configuration without it commits, and the
// future of that change can then stay unanswered for good: raft answers it
// from its FSM goroutine, which may see the shutdown first, and the
// change's future, unlike an Apply's, does not end with the shutdown. Raft
// stops only after that commit, or when the node stops; so raft shut down
// with a latest configuration that no longer holds this node is the
// removal done.
func (n *Node) selfRemoval(f raft.Future) raft.Future {
	return removalFuture{f: f, n: n}
}

type removalFuture struct {
	f raft.Future
	n *Node
}

func (r removalFuture) Error() error {
	done := make(chan error, 1)
	go func() { done <- r.f.Error() }()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-r.n.stop:
			return raft.ErrRaftShutdown
		case <-tick.C:
			if r.n.raft.State() == raft.Shutdown && !r.n.inLatestConfiguration(r.n.cfg.NodeID) {
				return nil
			}
		}
	}
}

// inLatestConfiguration reports whether id is a server of the latest
// configuration raft holds (committed or not); raft keeps it after it
// shuts down.
func (n *Node) inLatestConfiguration(id string) bool {
	for _, s := range n.raft.GetConfiguration().Configuration().Servers {
		if string(s.ID) == id {
			return true
		}
	}
	return false
}

// TransferLeadership hands leadership to req.id, or to the most
// up-to-date follower when id is empty, and waits for a new leader.
func (c *clusterService) TransferLeadership(ctx context.Context, req *quorumqpb.TransferLeadershipRequest) (*quorumqpb.TransferLeadershipResponse, error) {
	if c.n.raft.State() != raft.Leader {
		return nil, c.n.notLeader()
	}
	if err := c.n.transferLeadership(ctx, req.GetId()); err != nil {
		return nil, err
	}
	id, _ := c.n.leaderHint()
	return &quorumqpb.TransferLeadershipResponse{NewLeaderId: id}, nil
}

// transferLeadership transfers leadership (to id, or raft's choice when
// "") and waits until another server is leader.
func (n *Node) transferLeadership(ctx context.Context, id string) error {
	timeout := n.timeoutFor(ctx)
	var f raft.Future
	if id == "" {
		f = n.raft.LeadershipTransfer()
	} else {
		if id == n.cfg.NodeID {
			return status.Errorf(codes.InvalidArgument, "id: %q is already the leader", id)
		}
		servers, err := n.configuration(ctx)
		if err != nil {
			return status.Errorf(codes.Unavailable, "read configuration: %v", err)
		}
		var addr raft.ServerAddress
		for _, s := range servers {
			if string(s.ID) == id {
				addr = s.Address
			}
		}
		if addr == "" {
			return status.Errorf(codes.NotFound, "id: server %q is not in the Raft configuration", id)
		}
		f = n.raft.LeadershipTransferToServer(raft.ServerID(id), addr)
	}
	if err := n.await(ctx, f, timeout); err != nil {
		return status.Errorf(codes.Unavailable, "leadership transfer: %v", err)
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if _, lid := n.raft.LeaderWithID(); lid != "" && string(lid) != n.cfg.NodeID {
			n.log.Info("leadership transferred", "to", lid)
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return status.Error(codes.Unavailable, "leadership transfer finished but no new leader is known yet")
}
