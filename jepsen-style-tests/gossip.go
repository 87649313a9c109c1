package jepsen

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// gossipHealBound is how soon after a heal gossip and status must be whole
// again: every node sees every node alive with its API address, and the
// status the client gets shows every node's API address.
const gossipHealBound = 10 * time.Second

// longPartition cuts one random node off from the others, both ways, for
// as long as the schedule holds the fault (60–120 s: longer than
// memberlist takes to declare a node dead and forget it), then heals and
// requires gossip and status to be whole within gossipHealBound. A heal
// that is not whole by then fails, naming what is missing, and so fails
// the case.
type longPartition struct{}

func (longPartition) Name() string       { return "long-partition" }
func (longPartition) NeedsNetwork() bool { return true }
func (longPartition) NeedsLazyFS() bool  { return false }

func (longPartition) Inject(_ context.Context, env *Env) (string, error) {
	if env.Net == nil {
		return "", fmt.Errorf("long-partition: needs network namespaces")
	}
	all := ids(env)
	victim := all[env.Rand.IntN(len(all))]
	var rest []string
	for _, id := range all {
		if id != victim {
			rest = append(rest, id)
		}
	}
	g := complete([]string{victim}, rest)
	return "cut " + victim + " off: " + describeGrudge(g), env.Net.Partition(g)
}

func (longPartition) Heal(ctx context.Context, env *Env) (string, error) {
	if env.Net == nil {
		return "", nil
	}
	if err := env.Net.Heal(); err != nil {
		return "", err
	}
	healed := time.Now()
	if err := env.Cluster.WaitGossipWhole(ctx, gossipHealBound); err != nil {
		return "all drop rules removed", err
	}
	return fmt.Sprintf("all drop rules removed; gossip and status whole after %.1f s", time.Since(healed).Seconds()), nil
}

// longPartitionSchedule holds each of cycles long partitions for a span
// drawn from hold, with a few quiet seconds around them.
func longPartitionSchedule(cycles int, hold [2]time.Duration) Schedule {
	return Schedule{Nemeses: []Nemesis{longPartition{}}, Cycles: cycles, Quiet: [2]time.Duration{2 * time.Second, 3 * time.Second}, Fault: hold}
}

// GossipView is what the cluster says about its membership at one moment.
type GossipView struct {
	// Members holds each node's gossip members, by the ID of the node
	// asked; a node that did not answer is absent.
	Members map[string][]*quorumqpb.Member
	// Status is the status fan-out the client got (nil with StatusErr).
	Status    *quorumqpb.StatusResponse
	StatusErr error
}

// GossipView asks every node for its gossip members (1 s each) and the
// client for the cluster's status (2 s: the node asked fans out to the
// others with a timeout of 1 s).
func (c *Cluster) GossipView(ctx context.Context) GossipView {
	v := GossipView{Members: map[string][]*quorumqpb.Member{}}
	for _, n := range c.Nodes {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := quorumqpb.NewClusterClient(n.Conn()).Members(cctx, &quorumqpb.MembersRequest{})
		cancel()
		if err == nil {
			v.Members[n.ID] = resp.GetMembers()
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	cl, err := (&World{Addrs: c.APIAddrs()}).newClient(cctx)
	if err != nil {
		v.StatusErr = err
		return v
	}
	defer cl.Close()
	v.Status, v.StatusErr = cl.Status(cctx)
	return v
}

// GossipProblems lists what keeps view from being whole for the cluster's
// nodes: a node that did not answer, a node missing from or not alive in
// some node's gossip members, an API address that is unknown or not the
// node's, a status that failed, lacks a node, or has a node with an error
// or without its API address. None means whole.
func (c *Cluster) GossipProblems(v GossipView) []string {
	var out []string
	for _, asked := range c.Nodes {
		ms, ok := v.Members[asked.ID]
		if !ok {
			out = append(out, asked.ID+" did not answer Members")
			continue
		}
		byID := map[string]*quorumqpb.Member{}
		for _, m := range ms {
			byID[m.GetId()] = m
		}
		for _, n := range c.Nodes {
			m := byID[n.ID]
			switch {
			case m == nil:
				out = append(out, fmt.Sprintf("%s's gossip lacks %s", asked.ID, n.ID))
			case m.GetState() != "alive":
				out = append(out, fmt.Sprintf("%s sees %s %s in gossip", asked.ID, n.ID, m.GetState()))
			case m.GetApiAddr() != n.APIAddr:
				out = append(out, fmt.Sprintf("%s has API address %q for %s, want %s", asked.ID, m.GetApiAddr(), n.ID, n.APIAddr))
			}
		}
	}
	if v.Status == nil {
		return append(out, fmt.Sprintf("status: %v", v.StatusErr))
	}
	byID := map[string]*quorumqpb.NodeStatus{}
	for _, st := range v.Status.GetNodes() {
		byID[st.GetId()] = st
	}
	for _, n := range c.Nodes {
		st := byID[n.ID]
		switch {
		case st == nil:
			out = append(out, "status lacks "+n.ID)
		case st.GetError() != "":
			out = append(out, fmt.Sprintf("status of %s: %s", n.ID, st.GetError()))
		case st.GetApiAddr() != n.APIAddr:
			out = append(out, fmt.Sprintf("status shows API address %q for %s, want %s", st.GetApiAddr(), n.ID, n.APIAddr))
		}
	}
	return out
}

// WaitGossipWhole polls GossipView until GossipProblems finds none, and
// fails with the last problems if that takes longer than d.
func (c *Cluster) WaitGossipWhole(ctx context.Context, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		p := c.GossipProblems(c.GossipView(ctx))
		if len(p) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gossip and status not whole %s after the heal: %s", d, strings.Join(p, "; "))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gossip and status not whole: %w; last: %s", ctx.Err(), strings.Join(p, "; "))
		case <-time.After(250 * time.Millisecond):
		}
	}
}
