package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/quorumq/quorumq/client"
)

func init() {
	dlqCmd := &cobra.Command{
		Use:   "dlq",
		Short: "Work with dead letters",
	}
	dlqCmd.AddCommand(dlqRedriveCmd())
	rootCmd.AddCommand(dlqCmd)
}

func dlqRedriveCmd() *cobra.Command {
	var to string
	var maxMsgs, batch int
	cmd := clientVerb(&cobra.Command{
		Use:   "redrive QUEUE",
		Short: "Move dead letters back to the queue they came from (or --to another)",
		Long: `Move the dead letters of QUEUE (its available dead letters, and its own
dead messages) back into the queue each came from, or into --to, lowest id
first, until none is left or --max are moved.

Each batch (--batch, default 100) is one Raft command that deletes its
messages from QUEUE and enqueues them in the target, so a failure in the
middle never loses or duplicates a message. A moved message keeps its
body, attributes and dedup ID and is not taken for a duplicate. Progress
is the redriven_total of queue stats.`,
		Args: cobra.ExactArgs(1),
	}, func(ctx context.Context, c *client.Client, f *cliFlags, cmd *cobra.Command, args []string) error {
		n, err := c.Redrive(ctx, args[0], to, maxMsgs, client.WithRedriveBatch(batch))
		if err != nil {
			return err
		}
		where := ""
		if to != "" {
			where = " to " + to
		}
		return report(cmd, f, map[string]any{"queue": args[0], "to": to, "moved": n}, "moved %d message(s) from %s%s\n", n, args[0], where)
	})
	fl := cmd.Flags()
	fl.StringVar(&to, "to", "", "target queue (default: the queue each message came from)")
	fl.IntVar(&maxMsgs, "max", 0, "move at most this many (0: all)")
	fl.IntVar(&batch, "batch", 100, "messages per Raft command (1 to 1000)")
	return cmd
}
