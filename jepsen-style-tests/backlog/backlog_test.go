// Package backlog is the fault suite's case of a node killed and
// restarted while a large backlog waits: the restart must bring the whole
// backlog back (from the node's snapshot and log, whatever holds the
// messages on disk) and the node must end with the same state as the
// others.
//
// It is a package of its own, not a case of TestJepsen: it needs its own
// minutes of go test's per-package timeout, and its history (a hundred
// thousand sends) is checked here by counting, not by the suite's
// per-operation checkers.
package backlog

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quorumq/quorumq/client"
	"github.com/quorumq/quorumq/jepsen-style-tests/harness"
)

// backlogSize is how many messages wait while nodes are killed, each
// with a body of bodySize bytes: its value, a space, then padding.
const (
	backlogSize = 100_000
	bodySize    = 1024
)

func body(v string) []byte {
	b := make([]byte, bodySize)
	copy(b, v+" ")
	for i := len(v) + 1; i < len(b); i++ {
		b[i] = byte('a' + i%26)
	}
	return b
}

func valueOf(b []byte) string {
	v, _, _ := strings.Cut(string(b), " ")
	return v
}

// TestRestartWithLargeBacklog fills one queue with backlogSize messages,
// then kills -9 a follower, sends more while it is down and restarts it,
// then does the same to the leader. After each restart every node must
// reach the same applied index with the same state hash, and at the end
// a drain on the healed cluster must deliver every acknowledged message:
// none missing, none delivered twice at its first attempt.
func TestRestartWithLargeBacklog(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: builds the server and fills a three-node cluster with a large backlog (-short)")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "quorumq")
	if err := harness.BuildBinary(bin, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	// Snapshots during the fill, so that a restart restores a snapshot
	// holding most of the backlog and replays the log after it.
	cl, err := harness.StartCluster(ctx, harness.ClusterConfig{
		Bin: bin, DataDir: filepath.Join(dir, "data"), LogDir: dir, IDs: []string{"n1", "n2", "n3"},
		ExtraArgs: []string{"--snapshot-threshold", "512", "--snapshot-interval", "2s", "--trailing-logs", "256"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	logs := func() {
		for _, n := range cl.Nodes {
			b, _ := os.ReadFile(n.LogPath)
			if len(b) > 20000 {
				b = b[len(b)-20000:]
			}
			t.Logf("--- %s log (tail) ---\n%s", n.ID, b)
		}
	}

	c, err := client.New(ctx, cl.APIAddrs(), client.WithAttemptTimeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.CreateQueue(ctx, "backlog", client.QueueSettings{}); err != nil {
		t.Fatal(err)
	}

	sent := map[string]bool{} // values whose send was acknowledged
	send := func(from, to int) {
		t.Helper()
		start := time.Now()
		p := c.NewProducer()
		futs := make([]*client.SendFuture, 0, to-from)
		for i := from; i < to; i++ {
			v := "m-" + strconv.Itoa(i)
			futs = append(futs, p.SendAsync(ctx, "backlog", client.OutMessage{Body: body(v), DedupID: v}))
		}
		for i, f := range futs {
			if _, err := f.Wait(ctx); err != nil {
				logs()
				t.Fatalf("send m-%d: %v", from+i, err)
			}
			sent["m-"+strconv.Itoa(from+i)] = true
		}
		p.Close()
		t.Logf("sent m-%d..m-%d in %v", from, to-1, time.Since(start).Round(time.Millisecond))
	}
	converged := func(after string) {
		t.Helper()
		if err := cl.WaitHealthy(ctx, 3); err != nil {
			logs()
			t.Fatalf("after %s: %v", after, err)
		}
		cctx, ccancel := context.WithTimeout(ctx, 60*time.Second)
		conv := cl.WaitConverged(cctx)
		ccancel()
		if !conv.Converged {
			logs()
			t.Fatalf("after %s: %s (applied %v, hashes %v)", after, conv.Problem, conv.Applied, conv.Hashes)
		}
		t.Logf("after %s: every node at applied index %v with state hash %v", after, conv.Applied, conv.Hashes)
	}
	restart := func(n *harness.Node, role string, more int) {
		t.Helper()
		if err := n.Proc.Kill(); err != nil {
			t.Fatal(err)
		}
		// Sends go on without it: the restarted node has a log to catch up on.
		send(len(sent), len(sent)+more)
		start := time.Now()
		if err := cl.Restart(n, false); err != nil {
			t.Fatal(err)
		}
		converged(fmt.Sprintf("the %s %s was killed and restarted", role, n.ID))
		t.Logf("%s %s: restart to converged in %v", role, n.ID, time.Since(start).Round(time.Millisecond))
	}

	send(0, backlogSize)
	converged("the fill")
	// A snapshot on every node now, so that each restart restores the
	// backlog from its snapshot and replays only the log after it.
	for _, n := range cl.Nodes {
		if err := cl.Snapshot(ctx, n); err != nil {
			t.Fatalf("snapshot of %s: %v", n.ID, err)
		}
	}
	leader, err := cl.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var follower *harness.Node
	for _, n := range cl.Nodes {
		if n != leader {
			follower = n
			break
		}
	}
	restart(follower, "follower", 1000)
	leader, err = cl.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	restart(leader, "leader", 1000)

	info, err := c.GetQueue(ctx, "backlog")
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Stats.Ready; got != uint64(len(sent)) {
		t.Errorf("after the restarts the queue holds %d ready messages, want the %d sent", got, len(sent))
	}

	// Drain on the healed cluster: every message once, none missing.
	var (
		mu       sync.Mutex
		seen     = map[string]int{}
		firstDup []string
	)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 8+backlogSize)
	for w := 0; w < 8; w++ {
		wg.Go(func() {
			empty := 0
			for empty < 3 {
				ms, err := c.Receive(ctx, "backlog", 100, client.WithVisibility(2*time.Minute))
				if err != nil {
					errs <- fmt.Errorf("receive: %w", err)
					return
				}
				if len(ms) == 0 {
					empty++
					continue
				}
				empty = 0
				mu.Lock()
				for _, m := range ms {
					v := valueOf(m.Body)
					if len(m.Body) != bodySize || string(m.Body) != string(body(v)) {
						errs <- fmt.Errorf("message %d: body of %d bytes is not the one sent for %q", m.Receipt.MessageID, len(m.Body), v)
					}
					seen[v]++
					if seen[v] > 1 && m.Receipt.Attempt == 1 {
						firstDup = append(firstDup, v)
					}
				}
				mu.Unlock()
				rs := make([]client.Receipt, len(ms))
				for i, m := range ms {
					rs[i] = m.Receipt
				}
				if err := c.Ack(ctx, "backlog", rs...); err != nil {
					errs <- fmt.Errorf("ack: %w", err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("drained %d distinct messages in %v", len(seen), time.Since(start).Round(time.Millisecond))
	var missing []string
	for v := range sent {
		if seen[v] == 0 {
			missing = append(missing, v)
		}
	}
	if len(missing) > 0 {
		t.Errorf("%d acknowledged messages never delivered, e.g. %s", len(missing), strings.Join(missing[:min(10, len(missing))], ", "))
	}
	if len(firstDup) > 0 {
		t.Errorf("%d messages delivered twice at attempt 1, e.g. %s", len(firstDup), strings.Join(firstDup[:min(10, len(firstDup))], ", "))
	}
	for v := range seen {
		if !sent[v] {
			t.Errorf("delivered %q, which was never sent", v)
			break
		}
	}
	converged("the drain")
}
