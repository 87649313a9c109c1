package lazyfs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/quorumq/quorumq/client"
)

// TestCorruptMinorityNodeDetectedAndReplaced flips bits of one value's log
// entry in a stopped follower's raft.db (after a power failure of that
// node), then restarts it: the node must refuse to start naming the file,
// the other two must keep serving with every value intact, and the
// operator's procedure must bring the node back:
//
//  1. quorumq cluster remove <id>   (RemoveServer on the leader)
//  2. wipe the node's data dir
//  3. start the node with its usual flags (--join): it joins as a fresh
//     server, is added as a voter by the same leader and catches up.
//
// The nodes keep their log in raft-boltdb (--log-store bolt), the store of
// data dirs made before raft-wal, which stays supported; the fault suite's
// corrupt-node case damages raft-wal's files.
func TestCorruptMinorityNodeDetectedAndReplaced(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: starts a three-node cluster (-short)")
	}
	if err := Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	servers := startServers(t, "--log-store", "bolt")
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	var addrs []string
	for _, s := range servers {
		addrs = append(addrs, s.api)
	}
	c, err := client.New(ctx, addrs)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if st, err := waitHealthy(ctx, c, 3); err != nil {
		t.Fatalf("cluster not healthy: %s", st)
	}

	sent := map[string]bool{}
	send := func(v string) {
		t.Helper()
		sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
		defer scancel()
		if _, err := c.Send(sctx, "q", []byte(v), client.WithDedupID(v)); err != nil {
			t.Fatalf("send %s: %v", v, err)
		}
		sent[v] = true
	}
	for i := range 30 {
		send(fmt.Sprintf("value-%03d", i))
	}
	const victim = "CORRUPT-ME-0001"
	send(victim)
	if st, err := waitHealthy(ctx, c, 3); err != nil {
		t.Fatalf("not replicated: %s", st)
	}

	leader := leaderID(ctx, c)
	var f *server
	for _, s := range servers {
		if s.id != leader {
			f = s
			break
		}
	}
	if _, err := PowerFail([]Target{{Name: f.id, FS: f.fs, Kill: f.kill, Start: func() error { return nil }}}, Drop, nil); err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(f.fs.Backing(), "data", "raft.db")
	offs, err := FlipBitsAt(dbPath, []byte(victim))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("flipped a bit at %d place(s) of %s in %s's raft.db: offsets %v", len(offs), victim, f.id, offs)

	if err := f.start(); err != nil {
		t.Fatal(err)
	}
	_ = f.proc.Wait(20 * time.Second) // its exit error is the refusal, which the log names
	if f.proc.Running() {
		t.Fatalf("%s kept running on a corrupt raft.db", f.id)
	}
	logText, _ := os.ReadFile(f.proc.LogPath)
	// The node's own last line, before the harness's exit line.
	lines := strings.Split(strings.TrimSpace(string(logText)), "\n")
	lastLine := lines[len(lines)-1]
	if len(lines) > 1 && strings.HasPrefix(lastLine, "=== harness: exit") {
		lastLine = lines[len(lines)-2]
	}
	if !strings.Contains(string(logText), "raft.db") || !strings.Contains(string(logText), "corrupt") {
		t.Fatalf("%s exited without naming raft.db as corrupt; log ends with %q", f.id, lastLine)
	}
	t.Logf("%s refused to start: %s", f.id, lastLine)

	// The other two serve, and no corrupt value reaches a client.
	for i := range 10 {
		send(fmt.Sprintf("after-%03d", i))
	}
	got := map[string]bool{}
	deadline := time.Now().Add(30 * time.Second)
	for len(got) < len(sent) && time.Now().Before(deadline) {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		msgs, err := c.Receive(rctx, "q", 50, client.WithWait(time.Second))
		rcancel()
		if err != nil {
			continue
		}
		for _, m := range msgs {
			v := string(m.Body)
			if !sent[v] || m.DedupID != v {
				t.Fatalf("a client received %q (dedup ID %q), which was never sent: corrupt data served", v, m.DedupID)
			}
			got[v] = true
			actx, acancel := context.WithTimeout(ctx, 5*time.Second)
			if err := c.Ack(actx, "q", m.Receipt); err != nil {
				t.Logf("ack %s: %v (it will be redelivered)", v, err)
			}
			acancel()
		}
	}
	if len(got) != len(sent) {
		var missing []string
		for v := range sent {
			if !got[v] {
				missing = append(missing, v)
			}
		}
		sort.Strings(missing)
		t.Fatalf("received %d of %d values; missing %v", len(got), len(sent), missing)
	}

	// Replace the node: remove, wipe, start it again.
	if err := c.RemoveServer(ctx, f.id); err != nil {
		t.Fatalf("remove %s: %v", f.id, err)
	}
	if err := os.RemoveAll(filepath.Join(f.fs.Mountpoint(), "data")); err != nil {
		t.Fatal(err)
	}
	if err := f.start(); err != nil {
		t.Fatal(err)
	}
	hctx, hcancel := context.WithTimeout(ctx, 40*time.Second)
	defer hcancel()
	if st, err := waitHealthy(hctx, c, 3); err != nil {
		t.Fatalf("%s not back as a converged voter: %s", f.id, st)
	}
	t.Logf("%s replaced: three voters with one state hash", f.id)
}
