package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// TestCluster is a cluster of in-process nodes on 127.0.0.1 for
// integration tests (this package's and others'). Every node runs the
// real stack: raft over TCP, bolt files in a temp dir, gossip, gRPC.
//
// Logs are discarded unless QUORUMQ_TEST_LOG is set to debug, info, warn
// or error.
type TestCluster struct {
	// Nodes[i] is nil while node i is killed.
	Nodes []*Node

	mu      sync.Mutex
	configs []Config
	tweak   func(i int, c *Config)
	dir     string
}

// StartTestCluster starts n nodes that bootstrap together, waits for a
// ready leader and registers a cleanup that stops every node.
func StartTestCluster(t testing.TB, n int) *TestCluster {
	return StartTestClusterWith(t, n, nil)
}

// StartTestClusterWith is StartTestCluster with tweak applied to each
// node's Config before it starts (snapshot thresholds, timeouts, ...).
func StartTestClusterWith(t testing.TB, n int, tweak func(i int, c *Config)) *TestCluster {
	t.Helper()
	c := &TestCluster{tweak: tweak, dir: t.TempDir()}
	t.Cleanup(c.stopAll)
	lc, err := StartLocal(context.Background(), LocalOptions{Dir: c.dir, N: n, Logger: testLogger(), Tweak: tweak})
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	c.Nodes, c.configs = lc.Nodes, lc.configs
	c.Leader(t)
	return c
}

func testLogger() *slog.Logger {
	var level slog.Level
	switch strings.ToLower(os.Getenv("QUORUMQ_TEST_LOG")) {
	case "debug":
		level = slog.LevelDebug
	case "info":
		level = slog.LevelInfo
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	default:
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// Addrs returns the API addresses of all nodes (killed ones included: a
// client must cope with a dead address).
func (c *TestCluster) Addrs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, len(c.configs))
	for i, cfg := range c.configs {
		out[i] = cfg.APIAddr
	}
	return out
}

// Live returns the nodes that are running.
func (c *TestCluster) Live() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Node
	for _, n := range c.Nodes {
		if n != nil {
			out = append(out, n)
		}
	}
	return out
}

// Leader waits (up to 15 s) until exactly one running node is the ready
// leader and returns it.
func (c *TestCluster) Leader(t testing.TB) *Node {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		var leaders []*Node
		for _, n := range c.Live() {
			if n.IsLeader() && n.ready.Load() {
				leaders = append(leaders, n)
			}
		}
		if len(leaders) == 1 {
			return leaders[0]
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no single ready leader within 15 s")
	return nil
}

// Index returns the position of node in Nodes, or -1.
func (c *TestCluster) Index(node *Node) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, n := range c.Nodes {
		if n == node {
			return i
		}
	}
	return -1
}

// Kill stops node i hard (no leadership transfer, no gossip leave).
func (c *TestCluster) Kill(i int) {
	c.mu.Lock()
	n := c.Nodes[i]
	c.Nodes[i] = nil
	c.mu.Unlock()
	if n != nil {
		n.Kill()
	}
}

// Shutdown stops node i gracefully.
func (c *TestCluster) Shutdown(t testing.TB, i int) {
	t.Helper()
	c.mu.Lock()
	n := c.Nodes[i]
	c.Nodes[i] = nil
	c.mu.Unlock()
	if n == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Shutdown(ctx); err != nil {
		t.Errorf("shutdown %s: %v", n.ID(), err)
	}
}

// Restart starts node i again with its data dir and addresses.
func (c *TestCluster) Restart(t testing.TB, i int) *Node {
	t.Helper()
	c.mu.Lock()
	if c.Nodes[i] != nil {
		c.mu.Unlock()
		t.Fatalf("restart node %d: still running", i)
	}
	cfg := c.configs[i]
	cfg.Join = nil
	for j, n := range c.Nodes {
		if n != nil && j != i {
			cfg.Join = append(cfg.Join, n.GossipAddr())
		}
	}
	c.mu.Unlock()
	var node *Node
	var err error
	// The old sockets may linger for a moment after a kill.
	for attempt := 0; attempt < 50; attempt++ {
		node, err = Start(context.Background(), cfg)
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("restart node %s: %v", cfg.NodeID, err)
	}
	c.mu.Lock()
	c.Nodes[i] = node
	c.mu.Unlock()
	return node
}

// Add starts one more node that joins the running cluster through gossip
// and returns its index.
func (c *TestCluster) Add(t testing.TB) int {
	t.Helper()
	c.mu.Lock()
	i := len(c.configs)
	cfg := LocalConfig(c.dir, i, c.configs[0].BootstrapExpect, testLogger())
	cfg.APIAddr, cfg.RaftAddr, cfg.GossipAddr = localAddr(0), localAddr(0), localAddr(0)
	for _, n := range c.Nodes {
		if n != nil {
			cfg.Join = append(cfg.Join, n.GossipAddr())
		}
	}
	c.mu.Unlock()
	node, cfg, err := startPinned(context.Background(), i, cfg, c.tweak)
	if err != nil {
		t.Fatalf("%v", err)
	}
	c.mu.Lock()
	c.configs = append(c.configs, cfg)
	c.Nodes = append(c.Nodes, node)
	c.mu.Unlock()
	return i
}

// WaitReplicated waits (up to 15 s) until every running node has applied
// the same index and reports the same state hash, and returns that hash.
func (c *TestCluster) WaitReplicated(t testing.TB) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		nodes := c.Live()
		idx, hash := nodes[0].AppliedIndex(), nodes[0].StateHash()
		same := true
		var b strings.Builder
		for _, n := range nodes {
			fmt.Fprintf(&b, " %s@%d=%.12s", n.ID(), n.AppliedIndex(), n.StateHash())
			same = same && n.AppliedIndex() == idx && n.StateHash() == hash
		}
		if same {
			return hash
		}
		last = b.String()
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("nodes did not converge within 15 s:%s", last)
	return ""
}

// Conn returns a gRPC connection to node i's API, closed at cleanup.
func (c *TestCluster) Conn(t testing.TB, i int) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(c.Addrs()[i], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial node %d: %v", i, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func (c *TestCluster) stopAll() {
	c.mu.Lock()
	nodes := append([]*Node(nil), c.Nodes...)
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, n := range nodes {
		if n != nil {
			wg.Add(1)
			go func() { defer wg.Done(); n.Kill() }()
		}
	}
	wg.Wait()
}
