package main

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

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
default), Raft ports base+100.., gossip ports base+200.., admin HTTP base+300..,
HTTP/JSON API base+400... Data lives in a
temporary directory that is removed on exit, unless --data-dir names one
(then a restart continues where the last run stopped). Queues are created on
first use.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if maxBase := cluster.MaxLocalBasePort(devNodes); basePort < 1 || basePort > maxBase {
				return fmt.Errorf("--base-port %d: want 1..%d so that base+%d stays a valid port", basePort, maxBase, 65535-maxBase)
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
			tuneGC(ctx, defaultGCHeadroom, logger)
			lc, err := cluster.StartLocal(ctx, cluster.LocalOptions{Dir: dir, N: devNodes, BasePort: basePort, Logger: logger})
			if err != nil {
				return err
			}

			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "quorumq dev: %d nodes on 127.0.0.1, data in %s%s\n", devNodes, dir, map[bool]string{true: " (removed on exit)", false: ""}[dataDir == ""])
			var apis []string
			for _, n := range lc.Nodes {
				role := "follower"
				if n.ID() == lc.LeaderID {
					role = "leader"
				}
				fmt.Fprintf(out, "  %s  api %s  raft %s  gossip %s  metrics http://%s/metrics  (%s)\n", n.ID(), n.APIAddr(), n.RaftAddr(), n.GossipAddr(), n.AdminAddr(), role)
				apis = append(apis, n.APIAddr())
			}
			var https []string
			for _, n := range lc.Nodes {
				https = append(https, "http://"+n.HTTPAddr())
			}
			fmt.Fprintf(out, "http: %s (HTTP/JSON API; any node answers; OpenAPI at /v1/openapi.json)\n", strings.Join(https, " "))
			fmt.Fprintf(out, "console: http://%s/console/ (any node's admin address serves it)\n", lc.Nodes[0].AdminAddr())
			next := ""
			if basePort != 7101 {
				next = " --addr " + strings.Join(apis, ",")
			}
			fmt.Fprintf(out, "next: in another terminal run `quorumq send%s demo hello` then `quorumq recv%s demo`; Ctrl-C stops the cluster\n", next, next)

			<-ctx.Done()
			stop()
			fmt.Fprintln(out, "stopping...")
			if err := lc.Close(); err != nil {
				return err
			}
			fmt.Fprintln(out, "stopped")
			return nil
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&basePort, "base-port", 7101, "API port of n1; Raft ports start at base+100, gossip at base+200, admin HTTP (metrics, health) at base+300, HTTP/JSON API at base+400")
	fl.StringVar(&dataDir, "data-dir", "", "keep the nodes' data in DIR/n1..n3 (default: a temporary directory removed on exit)")
	fl.StringVar(&logLevel, "log-level", "warn", "debug, info, warn or error")
	fl.StringVar(&logFormat, "log-format", "text", "text or json")
	return cmd
}
