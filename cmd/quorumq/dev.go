package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/quorumq/quorumq/cluster"
)

func init() { rootCmd.AddCommand(devCmd()) }

// devNodes is the size of the development cluster.
const devNodes = 3

func devCmd() *cobra.Command {
	var (
		basePort            int
		dataDir             string
		logLevel, logFormat string
	)
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a three-node cluster on 127.0.0.1 in the foreground (Ctrl-C stops it)",
		Long: `Run a three-node development cluster in this one process.

Nodes n1..n3 listen on 127.0.0.1: API ports base..base+2 (7101-7103 by
default), Raft ports base+100.., gossip ports base+200... Data lives in a
temporary directory that is removed on exit, unless --data-dir names one
(then a restart continues where the last run stopped). Queues are created on
first use.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if basePort < 1 || basePort+300+devNodes-1 > 65535 {
				return fmt.Errorf("--base-port %d: want 1..%d so that base+%d stays a valid port", basePort, 65535-300-devNodes+1, 300+devNodes-1)
			}
			privateFiles()
			logger, err := newSlogLogger(cmd.ErrOrStderr(), logLevel, logFormat)
			if err != nil {
				return err
			}
			dir := dataDir
			if dir == "" {
				if dir, err = os.MkdirTemp("", "quorumq-dev-"); err != nil {
					return err
				}
				defer os.RemoveAll(dir)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			lc, err := startLocalCluster(ctx, dir, basePort, logger)
			if err != nil {
				return err
			}
			nodes, gossip, closeAll, leader := lc.nodes, lc.gossip, lc.close, lc.leader
			addr := localAddr

			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "quorumq dev: %d nodes on 127.0.0.1, data in %s%s\n", devNodes, dir, map[bool]string{true: " (removed on exit)", false: ""}[dataDir == ""])
			var apis []string
			for i, n := range nodes {
				role := "follower"
				if n.ID() == leader {
					role = "leader"
				}
				fmt.Fprintf(out, "  %s  api %s  raft %s  gossip %s  metrics http://%s/metrics  (%s)\n", n.ID(), n.APIAddr(), addr(basePort+100+i), gossip[i], n.AdminAddr(), role)
				apis = append(apis, n.APIAddr())
			}
			next := ""
			if basePort != 7101 {
				next = " --addr " + strings.Join(apis, ",")
			}
			fmt.Fprintf(out, "next: in another terminal run `quorumq send%s demo hello` then `quorumq recv%s demo`; Ctrl-C stops the cluster\n", next, next)

			<-ctx.Done()
			stop()
			fmt.Fprintln(out, "stopping...")
			if err := closeAll(); err != nil {
				return err
			}
			fmt.Fprintln(out, "stopped")
			return nil
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&basePort, "base-port", 7101, "API port of n1; Raft ports start at base+100, gossip at base+200, admin HTTP (metrics, health) at base+300")
	fl.StringVar(&dataDir, "data-dir", "", "keep the nodes' data in DIR/n1..n3 (default: a temporary directory removed on exit)")
	fl.StringVar(&logLevel, "log-level", "warn", "debug, info, warn or error")
	fl.StringVar(&logFormat, "log-format", "text", "text or json")
	return cmd
}

// localAddr is 127.0.0.1:port.
func localAddr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// localCluster is a development cluster running in this process.
type localCluster struct {
	nodes  []*cluster.Node
	gossip []string
	leader string
	// close stops every node (without leadership transfer).
	close func() error
}

// apiAddrs lists the nodes' API addresses.
func (lc *localCluster) apiAddrs() []string {
	var out []string
	for _, n := range lc.nodes {
		out = append(out, n.APIAddr())
	}
	return out
}

// startLocalCluster starts devNodes nodes on 127.0.0.1 with data in
// dir/n1..n3 and ports from basePort (API), basePort+100 (Raft) and
// basePort+200 (gossip), basePort+300 (admin HTTP), and waits for a leader. `quorumq dev` and
// `quorumq bench --dev` both use it.
func startLocalCluster(ctx context.Context, dir string, basePort int, logger *slog.Logger) (*localCluster, error) {
	lc := &localCluster{}
	for i := 0; i < devNodes; i++ {
		lc.gossip = append(lc.gossip, localAddr(basePort+200+i))
	}
	lc.close = func() error {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var wg sync.WaitGroup
		errs := make([]error, len(lc.nodes))
		for i, n := range lc.nodes {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = n.Close(sctx) }()
		}
		wg.Wait()
		return errors.Join(errs...)
	}
	for i := 0; i < devNodes; i++ {
		cfg := cluster.LocalConfig(dir, i, devNodes, logger)
		cfg.APIAddr, cfg.RaftAddr, cfg.GossipAddr = localAddr(basePort+i), localAddr(basePort+100+i), lc.gossip[i]
		cfg.AdminAddr = localAddr(basePort + 300 + i)
		cfg.Join = lc.gossip
		n, err := cluster.Start(ctx, cfg)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("start %s: %w", cfg.NodeID, err), lc.close())
		}
		lc.nodes = append(lc.nodes, n)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	leader, err := lc.nodes[0].WaitLeader(wctx)
	if err != nil {
		return nil, errors.Join(err, lc.close())
	}
	lc.leader = leader
	return lc, nil
}
