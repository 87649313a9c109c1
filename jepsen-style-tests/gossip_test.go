package jepsen

import (
	"errors"
	"strings"
	"testing"

	"github.com/quorumq/quorumq/jepsen-style-tests/harness"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// wholeView is the view of three healthy nodes n1..n3 at 10.0.0.1..3.
func wholeView(c *Cluster) GossipView {
	v := GossipView{Members: map[string][]*quorumqpb.Member{}, Status: &quorumqpb.StatusResponse{}}
	for _, asked := range c.Nodes {
		for _, n := range c.Nodes {
			v.Members[asked.ID] = append(v.Members[asked.ID], &quorumqpb.Member{Id: n.ID, ApiAddr: n.APIAddr, State: "alive"})
		}
	}
	for _, n := range c.Nodes {
		v.Status.Nodes = append(v.Status.Nodes, &quorumqpb.NodeStatus{Id: n.ID, ApiAddr: n.APIAddr, State: "Follower"})
	}
	return v
}

// TestGossipCheckFailsOnABrokenView is the must-fail proof of the
// long-partition verdict: the check that the case runs after each heal
// passes a whole view and names the fault in every broken one (the
// broken views are what a node that never re-joined gossip shows).
func TestGossipCheckFailsOnABrokenView(t *testing.T) {
	c := &Cluster{&harness.Cluster{}}
	for _, id := range []string{"n1", "n2", "n3"} {
		c.Nodes = append(c.Nodes, &Node{ID: id, APIAddr: "10.0.0." + id[1:] + ":7101"})
	}
	if p := c.GossipProblems(wholeView(c)); len(p) != 0 {
		t.Fatalf("whole view: problems %v, want none", p)
	}
	cases := []struct {
		name   string
		mutate func(v *GossipView)
		want   string
	}{
		{"n3 dead in n1's gossip", func(v *GossipView) { v.Members["n1"][2].State = "dead" }, "n1 sees n3 dead in gossip"},
		{"n3 forgotten by n2", func(v *GossipView) { v.Members["n2"] = v.Members["n2"][:2] }, "n2's gossip lacks n3"},
		{"n3 sees only itself", func(v *GossipView) { v.Members["n3"] = v.Members["n3"][2:] }, "n3's gossip lacks n1"},
		{"stale API address", func(v *GossipView) { v.Members["n1"][1].ApiAddr = "10.0.0.9:7101" }, `n1 has API address "10.0.0.9:7101" for n2`},
		{"n2 does not answer", func(v *GossipView) { delete(v.Members, "n2") }, "n2 did not answer Members"},
		{"status: API address unknown", func(v *GossipView) {
			v.Status.Nodes[2] = &quorumqpb.NodeStatus{Id: "n3", Error: "API address unknown: the server is in the Raft configuration but not in gossip"}
		}, "status of n3: API address unknown"},
		{"status lacks a node", func(v *GossipView) { v.Status.Nodes = v.Status.Nodes[:2] }, "status lacks n3"},
		{"status without an API address", func(v *GossipView) { v.Status.Nodes[0].ApiAddr = "" }, `status shows API address "" for n1`},
		{"no status", func(v *GossipView) { v.Status, v.StatusErr = nil, errors.New("no leader") }, "status: no leader"},
	}
	for _, tc := range cases {
		v := wholeView(c)
		tc.mutate(&v)
		p := c.GossipProblems(v)
		if !strings.Contains(strings.Join(p, "; "), tc.want) {
			t.Errorf("%s: problems %q, want one containing %q", tc.name, p, tc.want)
		}
	}
}
