package cluster

import (
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quorumq/quorumq/fsm"
	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/raftnet"
)

// rogueLayer is a Raft stream layer whose connections leave from ip, so a
// test can play a host that is not a server of the cluster.
type rogueLayer struct {
	*raftnet.Layer
	ip net.IP
}

func (l rogueLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: l.ip}, Timeout: timeout}
	return d.Dial("tcp", string(address))
}

// rogueTransport is a raft NetworkTransport listening and dialing from ip.
func rogueTransport(t *testing.T, ip string) (*raft.NetworkTransport, string) {
	t.Helper()
	layer, err := raftnet.Listen(raftnet.Config{Bind: net.JoinHostPort(ip, "0")})
	if err != nil {
		t.Fatal(err)
	}
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: rogueLayer{Layer: layer, ip: net.ParseIP(ip)}, MaxPool: 1, Timeout: 5 * time.Second,
		Logger: hclogFor(testLogger(), "raft-net"),
	})
	t.Cleanup(func() { trans.Close() })
	return trans, layer.Addr().String()
}

func raftStat(n *Node, key string) uint64 {
	v, _ := strconv.ParseUint(n.raft.Stats()[key], 10, 64)
	return v
}

// A cluster whose Raft port has no TLS takes Raft RPCs only from servers
// of its configuration: a host that is not one (another address, or the
// same address but an ID and address that are not a server's) cannot
// move a follower's term or write to its log. Without the check, one
// AppendEntries with a higher term made the follower apply an entry the
// leader never wrote, and its state hash differed from the others' for
// good.
func TestRaftRPCsFromNonMembersAreRefused(t *testing.T) {
	conns := func(f *Node) float64 {
		return testutil.ToFloat64(f.metrics.raftConnsRefused.WithLabelValues("not-a-peer"))
	}
	rpcs := func(rpc string) func(f *Node) float64 {
		return func(f *Node) float64 { return testutil.ToFloat64(f.metrics.raftRPCsRefused.WithLabelValues(rpc)) }
	}
	for _, tc := range []struct {
		name, ip, id string // id "": the leader's ID and Raft address, copied
		entries      bool
		refusals     func(f *Node) float64 // the metric that counts the refusal
	}{
		// The nodes listen on 127.0.0.1; 127.0.0.2 is another host.
		{"append from another address", "127.0.0.2", "rogue", true, conns},
		{"append from another address in the leader's name", "127.0.0.2", "", true, conns},
		{"append from a member's address with a foreign ID", "127.0.0.1", "rogue", true, rpcs("append_entries")},
		{"heartbeat from a member's address with a foreign ID", "127.0.0.1", "rogue", false, rpcs("heartbeat")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := StartTestCluster(t, 3)
			leader := c.Leader(t)
			li := c.Index(leader)
			enqueue(t, c, li, "q", "a")
			c.WaitReplicated(t)
			f := c.Nodes[follower(t, c)]
			term, last, lastTerm := raftStat(f, "term"), raftStat(f, "last_log_index"), raftStat(f, "last_log_term")

			trans, addr := rogueTransport(t, tc.ip)
			id := tc.id
			if id == "" {
				id, addr = leader.ID(), leader.RaftAddr()
			}
			req := &raft.AppendEntriesRequest{
				RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(id), Addr: []byte(addr)},
				Term:      term + 5,
			}
			if tc.entries {
				data, err := fsm.Encode(&fsmpb.Command{NowUnixNano: time.Now().UnixNano(), Op: &fsmpb.Command_Enqueue{Enqueue: &fsmpb.Enqueue{
					Queue: "injected", CreateQueue: true, Messages: []*fsmpb.Message{{Body: []byte("not from the leader")}},
				}}})
				if err != nil {
					t.Fatal(err)
				}
				req.PrevLogEntry, req.PrevLogTerm = last, lastTerm
				req.Entries = []*raft.Log{{Index: last + 1, Term: term + 5, Type: raft.LogCommand, Data: data}}
				req.LeaderCommitIndex = last + 1
			}
			var resp raft.AppendEntriesResponse
			err := trans.AppendEntries(raft.ServerID(f.ID()), raft.ServerAddress(f.RaftAddr()), req, &resp)
			t.Logf("AppendEntries from %s as %q at %s with term %d: err %v, success %v, term %d", tc.ip, id, addr, req.Term, err, resp.Success, resp.Term)
			if err == nil && resp.Success {
				t.Errorf("%s took an AppendEntries from %s (ID %q)", f.ID(), tc.ip, id)
			}
			if got := raftStat(f, "term"); got != term {
				t.Errorf("%s's term moved from %d to %d", f.ID(), term, got)
			}
			if _, err := f.fsm.Queue("injected"); err == nil {
				t.Errorf("%s applied the injected entry: queue \"injected\" exists", f.ID())
			}
			if got := tc.refusals(f); got < 1 {
				t.Errorf("%s counted %v refusals, want at least 1", f.ID(), got)
			}
			enqueue(t, c, c.Index(c.Leader(t)), "q", "b")
			c.WaitReplicated(t)
		})
	}
}

// A follower that was down while a server was added, and that server then
// became leader, has a configuration without its new leader: the leader is
// known to it from gossip, so it takes the AppendEntries that bring it the
// entry adding that leader, and catches up.
func TestFollowerBehindAConfigurationChangeFollowsTheNewLeader(t *testing.T) {
	c := StartTestCluster(t, 3)
	li := c.Index(c.Leader(t))
	enqueue(t, c, li, "q", "a")
	c.WaitReplicated(t)
	fi := follower(t, c)
	c.Kill(fi)

	ni := c.Add(t)
	added := c.Nodes[ni]
	deadline := time.Now().Add(15 * time.Second)
	for !slices.Contains(voters(t, c.Leader(t)), added.ID()) {
		if time.Now().After(deadline) {
			t.Fatalf("%s not a voter within 15 s", added.ID())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if leader := c.Leader(t); leader != added {
		if err := leader.transferLeadership(ctxT(t, 10*time.Second), added.ID()); err != nil {
			t.Fatal(err)
		}
	}
	if got := c.Leader(t); got != added {
		t.Fatalf("leader is %s, want %s", got.ID(), added.ID())
	}
	enqueue(t, c, ni, "q", "b")

	f := c.Restart(t, fi)
	servers := f.raft.GetConfiguration().Configuration().Servers
	if slices.ContainsFunc(servers, func(s raft.Server) bool { return string(s.ID) == added.ID() }) {
		t.Fatalf("%s restarted with %s in its configuration; the test needs it without", f.ID(), added.ID())
	}
	c.WaitReplicated(t)
	t.Logf("%s caught up from leader %s, refusing %v heartbeats and %v appends meanwhile", f.ID(), added.ID(),
		testutil.ToFloat64(f.metrics.raftRPCsRefused.WithLabelValues("heartbeat")),
		testutil.ToFloat64(f.metrics.raftRPCsRefused.WithLabelValues("append_entries")))
}
