package lazyfs

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/quorumq/quorumq/client"
)

// TestInstalledSnapshotSurvivesPowerFailure: a follower that caught up by
// InstallSnapshot holds the leader's body-store files, written from the
// stream. Its next snapshot links those same files. Once raft has called
// that snapshot complete, a power failure must not take the files' data
// with it: the follower restarts from that snapshot and converges.
func TestInstalledSnapshotSurvivesPowerFailure(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: starts a three-node cluster (-short)")
	}
	if err := Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	// A short trailing log, so that a follower that misses a snapshot's
	// worth of entries can only catch up by InstallSnapshot.
	servers, cl := startServers(t, "--trailing-logs", "16")
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	c, err := client.New(ctx, cl.APIAddrs())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.CreateQueue(ctx, "q", client.QueueSettings{}); err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte("b"), 1024)
	send := func(n int) {
		t.Helper()
		for i := range n {
			if _, err := c.Send(ctx, "q", body, client.WithDedupID(fmt.Sprintf("m-%d-%d", time.Now().UnixNano(), i))); err != nil {
				t.Fatalf("send %d: %v", i, err)
			}
		}
	}
	send(200)

	leader, err := cl.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var follower *server
	for _, s := range servers {
		if s.id != leader.ID {
			follower = s
			break
		}
	}
	if err := follower.kill(); err != nil {
		t.Fatal(err)
	}
	send(500)
	if err := cl.Snapshot(ctx, leader); err != nil {
		t.Fatalf("snapshot on the leader %s: %v", leader.ID, err)
	}
	send(50) // past the trailing log: the follower needs the snapshot
	if err := follower.start(); err != nil {
		t.Fatal(err)
	}
	installed := func() bool {
		b, _ := os.ReadFile(follower.node.LogPath)
		return bytes.Contains(b, []byte("Installed remote snapshot"))
	}
	for !installed() {
		if ctx.Err() != nil {
			t.Fatalf("%s never installed the leader's snapshot", follower.id)
		}
		time.Sleep(100 * time.Millisecond)
	}
	send(50)
	if err := cl.Snapshot(ctx, follower.node); err != nil {
		t.Fatalf("snapshot on %s after the install: %v", follower.id, err)
	}

	loss, err := PowerFail([]Target{follower.target()}, Drop, rand.New(rand.NewPCG(1, 2)))
	if err != nil {
		t.Fatal(err)
	}
	l := loss[follower.id]
	t.Logf("power failure of %s after its own snapshot: %d B lost in %d files", follower.id, l.Bytes, l.Files)
	hctx, hcancel := context.WithTimeout(ctx, 30*time.Second)
	defer hcancel()
	if st, err := waitConverged(hctx, cl); err != nil {
		t.Fatalf("%s did not come back after the power failure: %s", follower.id, st)
	}
	info, err := c.GetQueue(ctx, "q")
	if err != nil {
		t.Fatal(err)
	}
	if info.Stats.Ready != 800 {
		t.Fatalf("queue q holds %d ready messages, want 800", info.Stats.Ready)
	}
}
