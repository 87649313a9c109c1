package lazyfs

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quorumq/quorumq/client"
	"github.com/quorumq/quorumq/jepsen-style-tests/harness"
)

// This file runs three real quorumq processes, each with its data dir on
// its own lazyfs mount, under at-least-once and exactly-once workloads,
// and cuts the power of one node, of the leader (the largest minority of
// three) and of all three at the same moment. Every acknowledged message
// must come out: lost = 0.

// buildServer builds cmd/quorumq once for the test binary.
var buildServer = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "lazyfs-quorumq-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "quorumq")
	return bin, harness.BuildBinary(bin, nil)
})

// server is one quorumq process of the harness cluster, on a lazyfs mount.
type server struct {
	id   string
	fs   *FS
	node *harness.Node
}

func (s *server) start() error { return s.node.Proc.Start() }

// kill is kill -9 plus waiting for the exit, so the mount is idle.
func (s *server) kill() error { return s.node.Proc.Kill() }

func (s *server) target() Target {
	return Target{Name: s.id, FS: s.fs, Kill: s.kill, Start: s.start}
}

// startServers mounts one lazyfs per node as its data dir and starts a
// three-node harness cluster on them, healthy when it returns.
func startServers(t *testing.T, extraArgs ...string) ([]*server, *harness.Cluster) {
	t.Helper()
	bin, err := buildServer()
	if err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	ids := []string{"n1", "n2", "n3"}
	dataDir := filepath.Join(base, "data")
	servers := make([]*server, len(ids))
	for i, id := range ids {
		backing, mnt := filepath.Join(base, "backing", id), filepath.Join(dataDir, id)
		for _, d := range []string{backing, mnt} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		servers[i] = &server{id: id}
		if servers[i].fs, err = Mount(backing, mnt); err != nil {
			t.Fatal(err)
		}
	}
	var cl *harness.Cluster
	t.Cleanup(func() {
		if cl != nil {
			if t.Failed() {
				for _, n := range cl.Nodes {
					b, _ := os.ReadFile(n.LogPath)
					if len(b) > 6000 {
						b = b[len(b)-6000:]
					}
					t.Logf("--- %s log (tail) ---\n%s", n.ID, b)
				}
			}
			cl.Close()
		}
		for _, s := range servers {
			if err := s.fs.Unmount(); err != nil {
				t.Errorf("unmount %s: %v", s.id, err)
				s.fs.unmount()
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cl, err = harness.StartCluster(ctx, harness.ClusterConfig{Bin: bin, DataDir: dataDir, LogDir: base, IDs: ids,
		ExtraArgs: append([]string{"--log-level", "info"}, extraArgs...)})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range servers {
		s.node = cl.Node(s.id)
	}
	return servers, cl
}

// history records what the workloads saw, as distinct values.
type history struct {
	mu        sync.Mutex
	attempted map[string]map[string]bool            // queue -> value
	acked     map[string]map[string]bool            // queue -> value acknowledged by Send
	unknown   map[string]map[string]bool            // queue -> value whose Send ended unknown
	delivered map[string]map[string]map[uint64]bool // queue -> value -> message IDs
}

func newHistory() *history {
	return &history{attempted: map[string]map[string]bool{}, acked: map[string]map[string]bool{},
		unknown: map[string]map[string]bool{}, delivered: map[string]map[string]map[uint64]bool{}}
}

func (h *history) mark(m map[string]map[string]bool, queue, value string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if m[queue] == nil {
		m[queue] = map[string]bool{}
	}
	m[queue][value] = true
}

func (h *history) deliver(queue, value string, id uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.delivered[queue] == nil {
		h.delivered[queue] = map[string]map[uint64]bool{}
	}
	if h.delivered[queue][value] == nil {
		h.delivered[queue][value] = map[uint64]bool{}
	}
	h.delivered[queue][value][id] = true
}

// producer sends value-n to queue with the value as dedup ID until stop;
// a send whose outcome is unknown is retried with the same dedup ID until
// it is acknowledged (or fails definitely), so every attempted value ends
// acked or failed.
func producer(ctx context.Context, c *client.Client, h *history, queue string, stop <-chan struct{}) {
	for n := 0; ; n++ {
		select {
		case <-stop:
			return
		default:
		}
		v := fmt.Sprintf("%s-%05d", queue, n)
		h.mark(h.attempted, queue, v)
		for {
			sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			_, err := c.Send(sctx, queue, []byte(v), client.WithDedupID(v))
			cancel()
			if err == nil {
				h.mark(h.acked, queue, v)
				break
			}
			if ctx.Err() != nil {
				return
			}
			h.mark(h.unknown, queue, v)
			time.Sleep(200 * time.Millisecond)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// consumer receives from queue and either acks (sink) or moves each
// message to next in one transaction (exactly-once pipeline stage).
func consumer(ctx context.Context, c *client.Client, h *history, queue, next string) {
	for ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		msgs, err := c.Receive(rctx, queue, 20, client.WithVisibility(3*time.Second), client.WithWait(time.Second))
		cancel()
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		for _, m := range msgs {
			v := string(m.Body)
			if next == "" {
				h.deliver(queue, v, m.Receipt.MessageID)
				actx, cancel := context.WithTimeout(ctx, 3*time.Second)
				c.Ack(actx, queue, m.Receipt) // a lost ack redelivers: allowed
				cancel()
				continue
			}
			tctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			c.Transact(tctx, client.Transaction{
				Acks:     []client.TxAck{{Queue: queue, Receipt: m.Receipt}},
				Enqueues: []client.TxEnqueue{{Queue: next, Message: client.OutMessage{Body: m.Body, DedupID: next + "/" + v}}},
			}) // a failed transaction leaves the message leased; it comes back
			cancel()
		}
	}
}

// waitConverged waits until the leader lists three voters and every node
// reports the same applied index and state hash (three replicas
// converged), and says what the nodes reported last.
func waitConverged(ctx context.Context, cl *harness.Cluster) (string, error) {
	if err := cl.WaitHealthy(ctx, 3); err != nil {
		return err.Error(), err
	}
	conv := cl.WaitConverged(ctx)
	if !conv.Converged {
		return fmt.Sprintf("%s: applied %v, hashes %v", conv.Problem, conv.Applied, conv.Hashes), errors.New(conv.Problem)
	}
	return fmt.Sprintf("converged at %v", conv.Applied), nil
}

// TestPowerFailureLosesNoAcknowledgedMessage is the cluster-level proof:
// at-least-once (alo) and exactly-once (eo-a → eo-b) workloads through
// power failures of one node, of the leader, and of all three at once
// (Drop and Torn), with lost = 0 and no exactly-once duplicate.
func TestPowerFailureLosesNoAcknowledgedMessage(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: starts a three-node cluster (-short)")
	}
	if err := Available(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("LAZYFS_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (LAZYFS_SEED=%d replays the fault choices)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))

	servers, cl := startServers(t)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	c, err := client.New(ctx, cl.APIAddrs())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	h := newHistory()
	stop := make(chan struct{})
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	var producers, consumers sync.WaitGroup
	for _, q := range []string{"alo", "eo-a"} {
		producers.Add(1)
		go func() { defer producers.Done(); producer(wctx, c, h, q, stop) }()
	}
	for _, qc := range [][2]string{{"alo", ""}, {"alo", ""}, {"eo-a", "eo-b"}, {"eo-a", "eo-b"}, {"eo-b", ""}} {
		consumers.Add(1)
		go func() { defer consumers.Done(); consumer(wctx, c, h, qc[0], qc[1]) }()
	}

	byID := map[string]*server{}
	for _, s := range servers {
		byID[s.id] = s
	}
	// Each fault cuts the power while the victims are inside an fsync
	// (HoldNextFsync), so their unsynced writes are certainly dropped.
	faults := []struct {
		name string
		pick func() []*server
		mode Mode
	}{
		{"one node", func() []*server { return []*server{servers[rng.IntN(3)]} }, Drop},
		{"minority (the leader)", func() []*server {
			l, err := cl.WaitLeader(ctx)
			if err != nil {
				return []*server{nil}
			}
			return []*server{byID[l.ID]}
		}, Torn},
		{"all three at once", func() []*server { return servers }, Drop},
		{"all three at once", func() []*server { return servers }, Torn},
	}
	for _, f := range faults {
		time.Sleep(2 * time.Second) // let writes flow
		victims := f.pick()
		var targets []Target
		for _, s := range victims {
			if s == nil {
				t.Fatalf("%s: no leader to pick", f.name)
			}
			targets = append(targets, s.target())
		}
		losses, caught, err := PowerFailMidFsync(targets, f.mode, rng, 3*time.Second)
		if err != nil {
			t.Fatalf("power failure (%s): %v", f.name, err)
		}
		var lost []string
		for _, s := range victims {
			l, st := losses[s.id], s.fs.Stats()
			lost = append(lost, fmt.Sprintf("%s %d B in %d files, kept %d B (mount so far: %d writes, %d B, %d fsyncs)",
				s.id, l.Bytes, l.Files, l.KeptBytes, st.Writes, st.WrittenBytes, st.Fsyncs))
		}
		t.Logf("power failure, %s, %s, mid-fsync on %v: unsynced data dropped: %s", f.name, f.mode, caught, strings.Join(lost, "; "))
		if len(caught) == 0 {
			t.Errorf("power failure (%s): no victim was caught inside an fsync within 3 s: were the producers writing?", f.name)
		}
		hctx, hcancel := context.WithTimeout(ctx, 30*time.Second)
		st, err := waitConverged(hctx, cl)
		hcancel()
		if err != nil {
			t.Fatalf("cluster not healthy 30 s after the power failure (%s): %s", f.name, st)
		}
	}

	// Stop producing, drain every queue, then check.
	close(stop)
	producers.Wait()
	deadline := time.Now().Add(40 * time.Second)
	for {
		empty := true
		for _, q := range []string{"alo", "eo-a", "eo-b"} {
			gctx, gcancel := context.WithTimeout(ctx, 2*time.Second)
			info, err := c.GetQueue(gctx, q)
			gcancel()
			if err != nil || info.Stats.Ready+info.Stats.Leased+info.Stats.Delayed != 0 {
				empty = false
			}
		}
		if empty {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("queues not drained within 40 s")
		}
		time.Sleep(250 * time.Millisecond)
	}
	wcancel()
	consumers.Wait()
	if st, err := waitConverged(ctx, cl); err != nil {
		t.Fatalf("replicas did not converge: %s", st)
	}

	h.mu.Lock()
	defer h.mu.Unlock()
	for _, row := range []struct{ in, out string }{{"alo", "alo"}, {"eo-a", "eo-b"}} {
		var lost, unexpected, dupIDs []string
		for v := range h.acked[row.in] {
			if len(h.delivered[row.out][v]) == 0 {
				lost = append(lost, v)
			}
		}
		recovered := 0
		for v := range h.unknown[row.in] {
			if len(h.delivered[row.out][v]) > 0 {
				recovered++
			}
		}
		for v, ids := range h.delivered[row.out] {
			if !h.attempted[row.in][v] {
				unexpected = append(unexpected, v)
			}
			if len(ids) > 1 {
				dupIDs = append(dupIDs, v)
			}
		}
		sort.Strings(lost)
		t.Logf("%s: attempted %d, acked %d, unknown-then-retried %d, delivered %d, lost %d, unexpected %d, enqueued twice %d, recovered %d",
			row.in, len(h.attempted[row.in]), len(h.acked[row.in]), len(h.unknown[row.in]), len(h.delivered[row.out]),
			len(lost), len(unexpected), len(dupIDs), recovered)
		if len(lost) > 0 {
			t.Errorf("%s: %d acknowledged values lost, first %v", row.in, len(lost), lost[:min(5, len(lost))])
		}
		if len(unexpected) > 0 {
			t.Errorf("%s: %d values delivered that were never sent: %v", row.in, len(unexpected), unexpected[:min(5, len(unexpected))])
		}
		if len(dupIDs) > 0 {
			t.Errorf("%s: %d values enqueued as two messages (dedup broken): %v", row.out, len(dupIDs), dupIDs[:min(5, len(dupIDs))])
		}
		if len(h.acked[row.in]) < 50 {
			t.Errorf("%s: only %d values acknowledged: the workload did not run", row.in, len(h.acked[row.in]))
		}
	}
}
