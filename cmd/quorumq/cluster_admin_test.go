package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/quorumq/quorumq/client"
	"github.com/quorumq/quorumq/cluster"
)

// TestClusterAdminVerbs replaces a dead server the way README.md tells an
// operator to: transfer leadership, kill a follower, remove it, and see the
// Raft configuration shrink to the two live voters.
func TestClusterAdminVerbs(t *testing.T) {
	tc := cluster.StartTestCluster(t, 3)
	addr := strings.Join(tc.Addrs(), ",")
	old := tc.Leader(t)

	var moved map[string]string
	out := mustRun(t, clusterCmd(), addr, "", "transfer-leader", "--json")
	if err := json.Unmarshal([]byte(out), &moved); err != nil || moved["leader_id"] == "" || moved["leader_id"] == old.ID() {
		t.Fatalf("transfer-leader --json = %s (%v); want a leader other than %s", out, err, old.ID())
	}

	var victim int
	for i, n := range tc.Nodes {
		if n != nil && n.ID() != moved["leader_id"] {
			victim = i
			break
		}
	}
	victimID := tc.Nodes[victim].ID()
	tc.Kill(victim)
	live := strings.Join(tc.Addrs(), ",")
	if out := mustRun(t, clusterCmd(), live, "", "remove", victimID); !strings.Contains(out, "removed server "+victimID) {
		t.Fatalf("cluster remove printed %q", out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := client.New(ctx, tc.Addrs())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	members, err := c.Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range members {
		if m.GetId() == victimID && m.GetRaftSuffrage() != "" {
			t.Fatalf("removed server %s is still in the Raft configuration as %q", victimID, m.GetRaftSuffrage())
		}
	}
	// The two remaining voters still form a quorum and serve writes.
	if _, err := c.Send(ctx, "after-remove", []byte("x")); err != nil {
		t.Fatalf("send after removing %s: %v", victimID, err)
	}

	if _, err := run(t, clusterCmd(), live, "", "remove", "no-such-node"); err == nil || !strings.Contains(err.Error(), "no-such-node") {
		t.Fatalf("removing an unknown server = %v; want an error naming it", err)
	}
}
