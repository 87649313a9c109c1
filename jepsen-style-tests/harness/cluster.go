package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// ClusterConfig describes a cluster to start.
type ClusterConfig struct {
	Bin string
	// DataDir holds each node's data directory; LogDir each node's log.
	DataDir string
	LogDir  string
	IDs     []string
	// Place puts each node in a network namespace at an address of its
	// own; nil runs every node on loopback in the test process's
	// namespace, on ports chosen by FreePorts.
	Place func(id string) Placement
	// ExtraArgs are appended to every node's command line.
	ExtraArgs []string
	// FakeClock starts every node with a clock file (Node.SetClock); the
	// binary must be a -tags fakeclock build.
	FakeClock bool
}

// Node is one member of the cluster under test.
type Node struct {
	ID         string
	APIAddr    string
	RaftAddr   string
	GossipAddr string
	DataDir    string
	LogPath    string
	Proc       *Process
	// ClockFile moves the node's wall clock (SetClock); "" without one.
	ClockFile string

	conn *grpc.ClientConn
}

// Cluster is a running cluster of server processes.
type Cluster struct {
	cfg   ClusterConfig
	Nodes []*Node

	mu sync.Mutex
}

// Placement is where a node runs: its network namespace and its address
// there.
type Placement struct {
	Namespace string
	IP        netip.Addr
}

// Fixed ports inside a namespace: every node has its own IP there.
const (
	nsAPIPort    = 7101
	nsRaftPort   = 7201
	nsGossipPort = 7301
)

// StartCluster starts every node and waits until the cluster has a leader
// and every node is a voter.
func StartCluster(ctx context.Context, cfg ClusterConfig) (*Cluster, error) {
	c := &Cluster{cfg: cfg}
	var ports []int // three per node on loopback, chosen together so none repeats
	if cfg.Place == nil {
		var err error
		if ports, err = FreePorts(3 * len(cfg.IDs)); err != nil {
			return nil, err
		}
	}
	for i, id := range cfg.IDs {
		n := &Node{ID: id, DataDir: filepath.Join(cfg.DataDir, id), LogPath: filepath.Join(cfg.LogDir, id+".log")}
		if cfg.FakeClock {
			// Beside the data dir, not in it: a wipe or a lazyfs mount
			// must not touch it.
			n.ClockFile = filepath.Join(cfg.DataDir, id+".clock")
		}
		if cfg.Place != nil {
			ip := cfg.Place(id).IP.String()
			n.APIAddr = net.JoinHostPort(ip, strconv.Itoa(nsAPIPort))
			n.RaftAddr = net.JoinHostPort(ip, strconv.Itoa(nsRaftPort))
			n.GossipAddr = net.JoinHostPort(ip, strconv.Itoa(nsGossipPort))
		} else {
			p := ports[3*i:]
			n.APIAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(p[0]))
			n.RaftAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(p[1]))
			n.GossipAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(p[2]))
		}
		if err := os.MkdirAll(n.DataDir, 0o755); err != nil {
			return nil, err
		}
		conn, err := grpc.NewClient(n.APIAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, fmt.Errorf("admin connection to %s: %w", n.ID, err)
		}
		n.conn = conn
		c.Nodes = append(c.Nodes, n)
	}
	for _, n := range c.Nodes {
		ns := ""
		if cfg.Place != nil {
			ns = cfg.Place(n.ID).Namespace
		}
		n.Proc = &Process{Namespace: ns, Bin: cfg.Bin, Args: c.serverArgs(n, len(cfg.IDs)), LogPath: n.LogPath}
		if err := n.Proc.Start(); err != nil {
			c.Close()
			return nil, err
		}
	}
	if err := c.WaitHealthy(ctx, len(cfg.IDs)); err != nil {
		c.Close()
		return nil, fmt.Errorf("cluster did not come up: %w", err)
	}
	return c, nil
}

// serverArgs is node n's command line; bootstrap is the number of servers
// it waits for before bootstrapping (0: join an existing cluster).
func (c *Cluster) serverArgs(n *Node, bootstrap int) []string {
	servers := make([]Server, len(c.Nodes))
	for i, o := range c.Nodes {
		servers[i] = o.server()
	}
	// The nodes' addresses are loopback or in namespaces the test made,
	// and fault cases need plain traffic to inspect and cut.
	extra := []string{"--insecure-cluster"}
	if n.ClockFile != "" {
		extra = append(extra, "--fake-clock-file", n.ClockFile)
	}
	return ServerArgs(n.server(), servers, bootstrap, append(extra, c.cfg.ExtraArgs...)...)
}

// server is n as the harness names a node.
func (n *Node) server() Server {
	return Server{ID: n.ID, DataDir: n.DataDir, API: n.APIAddr, Raft: n.RaftAddr, Gossip: n.GossipAddr}
}

// Conn is the node's admin connection (the Cluster service).
func (n *Node) Conn() *grpc.ClientConn { return n.conn }

// SetClock writes node n's clock file (atomically: the server reads it
// every few milliseconds); line is in the format of
// cmd/quorumq/fakeclock.go. It fails for a node started without one.
func (n *Node) SetClock(line string) error {
	if n.ClockFile == "" {
		return fmt.Errorf("%s: started without --fake-clock-file (the case has no clock nemesis)", n.ID)
	}
	tmp := n.ClockFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(line), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, n.ClockFile)
}

// Node returns the node with id, or nil.
func (c *Cluster) Node(id string) *Node {
	for _, n := range c.Nodes {
		if n.ID == id {
			return n
		}
	}
	return nil
}

// APIAddrs lists every node's API address, for client.New.
func (c *Cluster) APIAddrs() []string {
	var out []string
	for _, n := range c.Nodes {
		out = append(out, n.APIAddr)
	}
	return out
}

// NodeStatus asks node n about itself only.
func (c *Cluster) NodeStatus(ctx context.Context, n *Node) (*quorumqpb.NodeStatus, error) {
	resp, err := quorumqpb.NewClusterClient(n.conn).NodeStatus(ctx, &quorumqpb.NodeStatusRequest{})
	if err != nil {
		return nil, err
	}
	return resp.GetNode(), nil
}

// Statuses asks every running, unpaused node about itself, concurrently,
// each within timeout. Nodes that do not answer are missing from the map.
func (c *Cluster) Statuses(ctx context.Context, timeout time.Duration) map[string]*quorumqpb.NodeStatus {
	var mu sync.Mutex
	out := map[string]*quorumqpb.NodeStatus{}
	var wg sync.WaitGroup
	for _, n := range c.Nodes {
		if !n.Proc.Running() || n.Proc.Paused() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			if st, err := c.NodeStatus(cctx, n); err == nil {
				mu.Lock()
				out[n.ID] = st
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return out
}

// ErrNoLeader is returned when no reachable node says it is the leader.
var ErrNoLeader = errors.New("no node reports itself leader")

// Leader returns the node that reports itself leader with the highest
// term among the nodes that answer.
func (c *Cluster) Leader(ctx context.Context) (*Node, error) {
	var best *quorumqpb.NodeStatus
	for _, st := range c.Statuses(ctx, time.Second) {
		if st.GetState() == "Leader" && (best == nil || st.GetTerm() > best.GetTerm()) {
			best = st
		}
	}
	if best == nil {
		return nil, ErrNoLeader
	}
	return c.Node(best.GetId()), nil
}

// WaitLeader polls until a leader is known or ctx ends.
func (c *Cluster) WaitLeader(ctx context.Context) (*Node, error) {
	for {
		l, err := c.Leader(ctx)
		if err == nil {
			return l, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for a leader: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// WaitHealthy waits until every running node answers, all agree on one
// leader, and the leader's configuration has voters voters.
func (c *Cluster) WaitHealthy(ctx context.Context, voters int) error {
	var last string
	for {
		// The status calls get their own deadline, not ctx's, so the last
		// poll before ctx ends is a complete one and "last status" is
		// what the nodes said, not what the deadline cut off.
		sts := c.Statuses(context.Background(), time.Second)
		last = describeStatuses(sts)
		running := 0
		for _, n := range c.Nodes {
			if n.Proc.Running() {
				running++
			}
		}
		leaders := map[string]bool{}
		nvoters := 0
		for _, st := range sts {
			leaders[st.GetLeaderId()] = true
			if st.GetVoter() {
				nvoters++
			}
		}
		if len(sts) == running && len(leaders) == 1 && !leaders[""] && nvoters >= voters {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w; last status: %s", ctx.Err(), last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Convergence is every node's state after healing.
type Convergence struct {
	Converged bool              `json:"converged"`
	Applied   map[string]uint64 `json:"applied_index"`
	Hashes    map[string]string `json:"state_hash"`
	Problem   string            `json:"problem,omitempty"`
}

// WaitConverged polls every node until all report the same applied index
// and then compares their state hashes. Equal indices with different
// hashes is divergence and is reported at once.
func (c *Cluster) WaitConverged(ctx context.Context) Convergence {
	var conv Convergence
	for {
		sts := c.Statuses(context.Background(), time.Second)
		conv = Convergence{Applied: map[string]uint64{}, Hashes: map[string]string{}}
		for id, st := range sts {
			conv.Applied[id] = st.GetAppliedIndex()
			conv.Hashes[id] = st.GetStateHash()
		}
		if len(sts) == len(c.Nodes) {
			idx := map[uint64]bool{}
			hashes := map[string]bool{}
			for id := range sts {
				idx[conv.Applied[id]] = true
				hashes[conv.Hashes[id]] = true
			}
			if len(idx) == 1 {
				if len(hashes) == 1 {
					conv.Converged = true
					return conv
				}
				conv.Problem = "nodes at the same applied index have different state hashes"
				return conv
			}
		}
		select {
		case <-ctx.Done():
			conv.Problem = fmt.Sprintf("no moment with every node at the same applied index; last poll: %s", describeStatuses(sts))
			return conv
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// RemoveServer asks the leader to remove server id from the Raft
// configuration.
func (c *Cluster) RemoveServer(ctx context.Context, id string) error {
	l, err := c.WaitLeader(ctx)
	if err != nil {
		return err
	}
	_, err = quorumqpb.NewClusterClient(l.conn).RemoveServer(ctx, &quorumqpb.RemoveServerRequest{Id: id})
	return err
}

// Voters returns the IDs the leader lists as voters.
func (c *Cluster) Voters(ctx context.Context) ([]string, error) {
	l, err := c.WaitLeader(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := quorumqpb.NewClusterClient(l.conn).Status(ctx, &quorumqpb.StatusRequest{})
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, st := range resp.GetNodes() {
		if st.GetVoter() {
			ids = append(ids, st.GetId())
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// Restart starts node n again with its data directory (after a kill).
// fresh empties the data directory first and starts the node as a joiner,
// the way an operator replaces a removed server.
func (c *Cluster) Restart(n *Node, fresh bool) error {
	if fresh {
		if err := EmptyDir(n.DataDir); err != nil {
			return err
		}
		n.Proc.Args = c.serverArgs(n, 0)
	}
	return n.Proc.Start()
}

// EmptyDir removes everything inside dir but not dir itself, which may be
// a mount point (a lazyfs data dir).
func EmptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// Snapshot asks node n to take a Raft snapshot now.
func (c *Cluster) Snapshot(ctx context.Context, n *Node) error {
	_, err := quorumqpb.NewClusterClient(n.conn).Snapshot(ctx, &quorumqpb.SnapshotRequest{})
	return err
}

// WaitVoters polls the leader until it lists want voters or d has passed,
// and returns the last list.
func (c *Cluster) WaitVoters(ctx context.Context, want int, d time.Duration) ([]string, error) {
	cctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		voters, err := c.Voters(cctx)
		if err == nil && len(voters) == want {
			return voters, nil
		}
		select {
		case <-cctx.Done():
			return voters, fmt.Errorf("voters %v after %s, want %d (last error: %v)", voters, d, want, err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Close stops every node (SIGKILL: the data is not needed afterwards) and
// closes the admin connections.
func (c *Cluster) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.Nodes {
		if n.Proc != nil {
			n.Proc.Close()
		}
		if n.conn != nil {
			n.conn.Close()
		}
	}
}

// describeStatuses is one line per node of what it said about itself.
func describeStatuses(sts map[string]*quorumqpb.NodeStatus) string {
	var ids []string
	for id := range sts {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var b strings.Builder
	for _, id := range ids {
		st := sts[id]
		fmt.Fprintf(&b, "[%s %s term=%d leader=%q applied=%d voter=%v] ", id, st.GetState(), st.GetTerm(), st.GetLeaderId(), st.GetAppliedIndex(), st.GetVoter())
	}
	if b.Len() == 0 {
		return "no node answered"
	}
	return b.String()
}
