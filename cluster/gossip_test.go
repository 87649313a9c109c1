package cluster

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// fastFailureDetection shortens memberlist's timers so that a node cut off
// from gossip is declared dead within about a second and forgotten a
// second later, instead of after about 40 s with the default timers.
func fastFailureDetection(mc *memberlist.Config) {
	mc.ProbeInterval = 200 * time.Millisecond
	mc.ProbeTimeout = 100 * time.Millisecond
	mc.SuspicionMult = 2
	mc.GossipInterval = 50 * time.Millisecond
	mc.GossipToTheDeadTime = time.Second
}

// swapGossipKey makes a node with keyring kr speak and understand only key
// from now on: with a key the others lack it is cut off from gossip
// (memberlist drops what it cannot decrypt, both ways) while its Raft
// traffic goes on.
func swapGossipKey(t *testing.T, kr *memberlist.Keyring, key []byte) {
	t.Helper()
	old := kr.GetPrimaryKey()
	if err := kr.AddKey(key); err != nil {
		t.Fatal(err)
	}
	if err := kr.UseKey(key); err != nil {
		t.Fatal(err)
	}
	if err := kr.RemoveKey(old); err != nil {
		t.Fatal(err)
	}
}

// gossipProblems asks every node, through its API, for its gossip members,
// its status fan-out and its leader hint, and lists what is not whole:
// a node missing or not alive in some node's view, an unknown API address,
// a status entry with an error, a leader hint without an address.
func gossipProblems(ctx context.Context, c *TestCluster, clients []quorumqpb.ClusterClient) []string {
	var problems []string
	addrs := c.Addrs()
	for i, node := range c.Nodes {
		cl := clients[i]
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		members, err := cl.Members(cctx, &quorumqpb.MembersRequest{})
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: Members: %v", node.ID(), err))
			cancel()
			continue
		}
		seen := map[string]*quorumqpb.Member{}
		for _, m := range members.GetMembers() {
			seen[m.GetId()] = m
		}
		for j, other := range c.Nodes {
			m := seen[other.ID()]
			switch {
			case m == nil:
				problems = append(problems, fmt.Sprintf("%s does not know %s", node.ID(), other.ID()))
			case m.GetState() != "alive" || m.GetApiAddr() != addrs[j]:
				problems = append(problems, fmt.Sprintf("%s sees %s %s with API address %q", node.ID(), other.ID(), m.GetState(), m.GetApiAddr()))
			}
		}
		st, err := cl.Status(cctx, &quorumqpb.StatusRequest{})
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: Status: %v", node.ID(), err))
		}
		for _, ns := range st.GetNodes() {
			if ns.GetError() != "" || ns.GetApiAddr() == "" {
				problems = append(problems, fmt.Sprintf("%s's status of %s: API address %q, error %q", node.ID(), ns.GetId(), ns.GetApiAddr(), ns.GetError()))
			}
		}
		if len(st.GetNodes()) != len(c.Nodes) {
			problems = append(problems, fmt.Sprintf("%s's status lists %d nodes, want %d", node.ID(), len(st.GetNodes()), len(c.Nodes)))
		}
		l, err := cl.Leader(cctx, &quorumqpb.LeaderRequest{})
		if err != nil || l.GetLeaderId() == "" || l.GetLeaderApiAddr() == "" {
			problems = append(problems, fmt.Sprintf("%s's leader hint: %q at %q (%v)", node.ID(), l.GetLeaderId(), l.GetLeaderApiAddr(), err))
		}
		cancel()
	}
	return problems
}

// TestNodeCutOffFromGossipRejoins cuts one node's gossip off until every
// side has declared the other dead and memberlist has forgotten it (past
// GossipToTheDeadTime, after which memberlist never contacts a dead node
// again on its own), then ends the cut. Every node must see every node
// alive again, with its API address, in its members, its status and its
// leader hint.
func TestNodeCutOffFromGossipRejoins(t *testing.T) {
	key := []byte("0123456789abcdef")
	keyrings := make([]*memberlist.Keyring, 3)
	c := StartTestClusterWith(t, 3, func(i int, cfg *Config) {
		cfg.GossipKey = key
		cfg.gossipTuning = func(mc *memberlist.Config) {
			fastFailureDetection(mc)
			kr, err := memberlist.NewKeyring(nil, key)
			if err != nil {
				t.Fatal(err)
			}
			mc.Keyring, keyrings[i] = kr, kr
		}
	})
	if p := waitGossipWhole(t, c, 15*time.Second); len(p) > 0 {
		t.Fatalf("gossip not whole before the cut: %s", strings.Join(p, "; "))
	}
	cut := c.Nodes[2]
	swapGossipKey(t, keyrings[2], []byte("fedcba9876543210"))
	deadline := time.Now().Add(15 * time.Second)
	for !allDead(c, cut) {
		if time.Now().After(deadline) {
			t.Fatalf("the cut node and the others did not declare each other dead within 15 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Several GossipToTheDeadTimes and probe rounds: every side has
	// stopped gossiping to the dead and removed them from its list.
	time.Sleep(4 * time.Second)
	swapGossipKey(t, keyrings[2], key)
	healed := time.Now()
	if p := waitGossipWhole(t, c, 15*time.Second); len(p) > 0 {
		t.Fatalf("gossip not whole 15 s after the cut ended: %s", strings.Join(p, "; "))
	}
	t.Logf("gossip whole %v after the cut ended", time.Since(healed).Round(10*time.Millisecond))
	// The re-join adds no server: the configuration is the three voters.
	if v := voters(t, c.Leader(t)); len(v) != 3 {
		t.Fatalf("voters %v after the re-join, want the three servers", v)
	}
}

// allDead reports whether every node other than cut sees cut dead and cut
// sees every other node dead.
func allDead(c *TestCluster, cut *Node) bool {
	for _, n := range c.Nodes {
		for _, m := range n.members.all() {
			if (n == cut) != (m.meta.ID == cut.ID()) && m.state == "alive" {
				return false
			}
		}
	}
	return true
}

// waitGossipWhole polls gossipProblems for up to d until it reports none
// and returns the last problems.
func waitGossipWhole(t *testing.T, c *TestCluster, d time.Duration) []string {
	t.Helper()
	var clients []quorumqpb.ClusterClient
	for i := range c.Nodes {
		clients = append(clients, quorumqpb.NewClusterClient(c.Conn(t, i)))
	}
	deadline := time.Now().Add(d)
	for {
		p := gossipProblems(context.Background(), c, clients)
		if len(p) == 0 || time.Now().After(deadline) {
			return p
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestJoinResolverNamesAddressesAsMemberlistDoes(t *testing.T) {
	r := &joinResolver{defaultPort: 7946, cache: map[string]resolvedJoin{}}
	for _, c := range []struct {
		join string
		want string
	}{
		{"127.0.0.1:7301", "127.0.0.1:7301"},
		{"n2/127.0.0.1:7301", "127.0.0.1:7301"}, // memberlist's optional node name
		{"127.0.0.1", "127.0.0.1:7946"},         // no port: the local gossip port
		{"localhost:7301", "127.0.0.1:7301"},
	} {
		if got := r.lookup(c.join); !slices.Contains(got, c.want) {
			t.Errorf("lookup(%q) = %v, want it to contain %s", c.join, got, c.want)
		}
	}
	if got := r.lookup("no-such-host.invalid:7301"); len(got) != 0 {
		t.Errorf("lookup of an unresolvable name = %v, want none (it counts as missing)", got)
	}
}
