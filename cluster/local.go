package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// LocalConfig is the Config of node i (from 0) of an n-node cluster that
// runs in one process on loopback, as StartLocal starts one: ID n<i+1>,
// data in dir/n<i+1>, all n bootstrapping together, queues created on
// first use and gossip timed for loopback. The caller sets the addresses
// and Join.
func LocalConfig(dir string, i, n int, logger *slog.Logger) Config {
	id := "n" + strconv.Itoa(i+1)
	return Config{
		NodeID:           id,
		DataDir:          filepath.Join(dir, id),
		BootstrapExpect:  n,
		AutoCreateQueues: true,
		LocalGossip:      true,
		Logger:           logger,
	}
}

// Port offsets of a local cluster with a base port: node i listens for
// the API on base+i, for Raft on base+LocalRaftPortOffset+i, for gossip on
// base+LocalGossipPortOffset+i, for admin HTTP on
// base+LocalAdminPortOffset+i and for the HTTP/JSON API on
// base+LocalHTTPPortOffset+i.
const (
	LocalRaftPortOffset   = 100
	LocalGossipPortOffset = 200
	LocalAdminPortOffset  = 300
	LocalHTTPPortOffset   = 400
)

// MaxLocalNodes is the largest LocalOptions.N: one more node would take
// the first Raft port as its API port.
const MaxLocalNodes = LocalRaftPortOffset

// localLeaderWait bounds StartLocal's wait for a leader.
const localLeaderWait = 30 * time.Second

// MaxLocalBasePort is the largest base port of an n-node local cluster:
// the last node's HTTP API port must still be a valid port.
func MaxLocalBasePort(n int) int { return 65535 - LocalHTTPPortOffset - (n - 1) }

// LocalOptions describes a cluster for StartLocal.
type LocalOptions struct {
	// Dir holds the nodes' data directories, Dir/n1..Dir/nN.
	Dir string
	// N is the number of nodes, 1..MaxLocalNodes.
	N int
	// BasePort fixes the ports (see LocalRaftPortOffset), so that a
	// client or a restart finds the cluster where it was. 0 takes free
	// ports below the kernel's ephemeral range (restartablePort), which a
	// restarted node finds free again, and runs no admin HTTP server.
	BasePort int
	// Logger receives every node's log.
	Logger *slog.Logger
	// Tweak, if set, changes node i's Config before it starts.
	Tweak func(i int, c *Config)
}

// LocalCluster is a cluster that StartLocal started in this process.
type LocalCluster struct {
	// Nodes are n1..nN in order.
	Nodes []*Node
	// LeaderID is the ID of the leader n1 knew when StartLocal returned.
	LeaderID string

	// configs are the Configs the nodes started with, their ports
	// replaced by the ones they bound, so a node restarts where it was.
	configs []Config
}

// StartLocal starts opts.N nodes on 127.0.0.1 from LocalConfig that
// bootstrap together, and waits (up to 30 s, or until ctx ends) until n1
// knows a leader. Each node joins through every gossip address known
// before it starts: with a base port all of them, so a restarted node
// finds whichever peers are up; with free ports those of the nodes
// already started. If any step fails, the nodes already started are
// closed and the error returned.
func StartLocal(ctx context.Context, opts LocalOptions) (*LocalCluster, error) {
	if opts.N < 1 || opts.N > MaxLocalNodes {
		return nil, fmt.Errorf("cluster: LocalOptions.N %d: want 1..%d", opts.N, MaxLocalNodes)
	}
	if opts.BasePort != 0 && (opts.BasePort < 1 || opts.BasePort > MaxLocalBasePort(opts.N)) {
		return nil, fmt.Errorf("cluster: LocalOptions.BasePort %d: want 0 (free ports) or 1..%d so that base+%d stays a valid port",
			opts.BasePort, MaxLocalBasePort(opts.N), LocalHTTPPortOffset+opts.N-1)
	}
	lc := &LocalCluster{}
	var gossip []string
	if opts.BasePort != 0 {
		for i := 0; i < opts.N; i++ {
			gossip = append(gossip, localAddr(opts.BasePort+LocalGossipPortOffset+i))
		}
	}
	if opts.BasePort != 0 {
		// Every address is known up front, so the nodes start side by
		// side, as the servers of a real cluster do: a start that
		// checks and replays a long log does not wait for the others'.
		lc.Nodes, lc.configs = make([]*Node, opts.N), make([]Config, opts.N)
		errs := make([]error, opts.N)
		var wg sync.WaitGroup
		for i := range opts.N {
			cfg := LocalConfig(opts.Dir, i, opts.N, opts.Logger)
			cfg.APIAddr = localAddr(opts.BasePort + i)
			cfg.RaftAddr = localAddr(opts.BasePort + LocalRaftPortOffset + i)
			cfg.GossipAddr = gossip[i]
			cfg.AdminAddr = localAddr(opts.BasePort + LocalAdminPortOffset + i)
			cfg.HTTPAddr = localAddr(opts.BasePort + LocalHTTPPortOffset + i)
			cfg.Join = gossip
			wg.Go(func() { lc.Nodes[i], lc.configs[i], errs[i] = startPinned(ctx, i, cfg, opts.Tweak) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			lc.Nodes = slices.DeleteFunc(lc.Nodes, func(n *Node) bool { return n == nil })
			return nil, errors.Join(err, lc.Close())
		}
	}
	for i := 0; i < opts.N && opts.BasePort == 0; i++ {
		var (
			node *Node
			cfg  Config
			err  error
		)
		// Another process may take a port between the check and the
		// bind: then the node tries other ones.
		for attempt := 0; ; attempt++ {
			cfg = LocalConfig(opts.Dir, i, opts.N, opts.Logger)
			cfg.APIAddr, cfg.RaftAddr, cfg.GossipAddr, cfg.HTTPAddr = restartablePort(), restartablePort(), restartablePort(), restartablePort()
			for _, n := range lc.Nodes {
				cfg.Join = append(cfg.Join, n.GossipAddr())
			}
			node, cfg, err = startPinned(ctx, i, cfg, opts.Tweak)
			if err == nil || attempt == 4 || !strings.Contains(err.Error(), "address already in use") {
				break
			}
		}
		if err != nil {
			return nil, errors.Join(err, lc.Close())
		}
		lc.Nodes = append(lc.Nodes, node)
		lc.configs = append(lc.configs, cfg)
	}
	wctx, cancel := context.WithTimeout(ctx, localLeaderWait)
	defer cancel()
	leader, err := lc.Nodes[0].WaitLeader(wctx)
	if err != nil {
		return nil, errors.Join(err, lc.Close())
	}
	lc.LeaderID = leader
	return lc, nil
}

// startPinned starts node i from cfg changed by tweak, and returns it with
// that Config, its ports replaced by the ones the node bound (the Raft
// configuration names them, so a restart must reuse them).
func startPinned(ctx context.Context, i int, cfg Config, tweak func(i int, c *Config)) (*Node, Config, error) {
	if tweak != nil {
		tweak(i, &cfg)
	}
	node, err := Start(ctx, cfg)
	if err != nil {
		return nil, cfg, fmt.Errorf("start %s: %w", cfg.NodeID, err)
	}
	cfg.APIAddr, cfg.RaftAddr, cfg.GossipAddr = node.APIAddr(), node.RaftAddr(), node.GossipAddr()
	if cfg.HTTPAddr != "" {
		cfg.HTTPAddr = node.HTTPAddr()
	}
	return node, cfg, nil
}

// APIAddrs lists the nodes' API addresses, n1 first.
func (lc *LocalCluster) APIAddrs() []string {
	var out []string
	for _, n := range lc.Nodes {
		out = append(out, n.APIAddr())
	}
	return out
}

// Close stops every node at once and waits up to 10 s. It skips the
// leadership transfer of Node.Shutdown: the whole cluster is stopping, so
// there is no one to hand leadership to.
func (lc *LocalCluster) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(lc.Nodes))
	for i, n := range lc.Nodes {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = n.Close(ctx) }()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// localAddr is 127.0.0.1:port.
func localAddr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// restartablePort returns a loopback address whose port is free for TCP
// and UDP now and lies below 32768, where Linux's ephemeral range starts
// (ip_local_port_range). A port the kernel hands out for ":0" comes from
// that range, which every outgoing connection draws from too: while a
// node is stopped, a connection elsewhere may take its port, and the
// node cannot start again on it. Below the range, only another listener
// that picked the same port can. Without a free port after 100 tries it
// falls back to ":0".
func restartablePort() string {
	for range 100 {
		addr := localAddr(20000 + rand.IntN(12000))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", addr)
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		return addr
	}
	return localAddr(0)
}
