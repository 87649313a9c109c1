package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/quorumq/quorumq/client"
)

func init() { rootCmd.AddCommand(clusterCmd()) }

// clusterCmd groups the Raft membership admin verbs. Adding a server needs
// no verb: a server started with --join is added by the leader.
func clusterCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Cluster admin: remove a server, transfer leadership, snapshot now",
	}
	remove := clientVerb(&cobra.Command{
		Use:   "remove ID",
		Short: "Remove server ID from the Raft configuration (to replace a dead server)",
		Long: `Remove server ID from the Raft configuration. Do this for a server that is
gone for good, before starting its replacement with a new ID, an empty data
dir and --join. A removed server is not added back while it keeps its data.`,
		Args: cobra.ExactArgs(1),
	}, func(ctx context.Context, c *client.Client, f *cliFlags, cmd *cobra.Command, args []string) error {
		if err := c.RemoveServer(ctx, args[0]); err != nil {
			return err
		}
		return report(cmd, f, map[string]string{"removed": args[0]}, "removed server %s\n", args[0])
	})
	transfer := clientVerb(&cobra.Command{
		Use:   "transfer-leader [ID]",
		Short: "Hand leadership to server ID (or to the most up-to-date follower)",
		Args:  cobra.MaximumNArgs(1),
	}, func(ctx context.Context, c *client.Client, f *cliFlags, cmd *cobra.Command, args []string) error {
		target := ""
		if len(args) == 1 {
			target = args[0]
		}
		leader, err := c.TransferLeadership(ctx, target)
		if err != nil {
			return err
		}
		return report(cmd, f, map[string]string{"leader_id": leader}, "leader is now %s\n", leader)
	})
	snapshot := clientVerb(&cobra.Command{
		Use:   "snapshot",
		Short: "Make the leader take a Raft snapshot now (compacts its log)",
		Args:  cobra.NoArgs,
	}, func(ctx context.Context, c *client.Client, f *cliFlags, cmd *cobra.Command, _ []string) error {
		info, err := c.Snapshot(ctx)
		if err != nil {
			return err
		}
		return report(cmd, f, map[string]any{"id": info.ID, "index": info.Index, "term": info.Term, "bytes": info.Size},
			"snapshot %s: log index %d, term %d, %d bytes\n", info.ID, info.Index, info.Term, info.Size)
	})
	cmd.AddCommand(remove, transfer, snapshot)
	return cmd
}
