package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func init() { rootCmd.AddCommand(clusterCmd()) }

// clusterCmd groups the Raft membership admin verbs. Adding a server needs
// no verb: a server started with --join is added by the leader.
func clusterCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Cluster admin: remove a server, transfer leadership",
	}

	var rf cliFlags
	remove := &cobra.Command{
		Use:   "remove ID",
		Short: "Remove server ID from the Raft configuration (to replace a dead server)",
		Long: `Remove server ID from the Raft configuration. Do this for a server that is
gone for good, before starting its replacement with a new ID, an empty data
dir and --join. A removed server is not added back while it keeps its data.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, c, done, err := rf.connect(cmd)
			if err != nil {
				return err
			}
			defer done()
			if err := c.RemoveServer(ctx, args[0]); err != nil {
				return err
			}
			if rf.json {
				return printJSON(cmd.OutOrStdout(), map[string]string{"removed": args[0]})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed server %s\n", args[0])
			return nil
		},
	}
	addClientFlags(remove, &rf)

	var tf cliFlags
	transfer := &cobra.Command{
		Use:   "transfer-leader [ID]",
		Short: "Hand leadership to server ID (or to the most up-to-date follower)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, c, done, err := tf.connect(cmd)
			if err != nil {
				return err
			}
			defer done()
			target := ""
			if len(args) == 1 {
				target = args[0]
			}
			leader, err := c.TransferLeadership(ctx, target)
			if err != nil {
				return err
			}
			if tf.json {
				return printJSON(cmd.OutOrStdout(), map[string]string{"leader_id": leader})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "leader is now %s\n", leader)
			return nil
		},
	}
	addClientFlags(transfer, &tf)

	cmd.AddCommand(remove, transfer)
	return cmd
}
