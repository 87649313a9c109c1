package main

import (
	"context"
	"fmt"
	"math"

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
	var rate float64
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
is the redriven_total of queue stats.

--rate R paces the redrive to at most R messages a second on average, so
that the target's consumers are not flooded: this command paces it,
sending batches of at most a tenth of a second's worth (--batch is cut
to R/10, at least 1). It stops where it is when --timeout ends; run it
again to go on.`,
		Args: cobra.ExactArgs(1),
	}, func(ctx context.Context, c *client.Client, f *cliFlags, cmd *cobra.Command, args []string) error {
		if !(rate >= 0) || math.IsInf(rate, 0) {
			return fmt.Errorf("--rate %v: want messages per second >= 0 (0: no limit)", rate)
		}
		n, err := c.Redrive(ctx, args[0], to, maxMsgs, client.WithRedriveBatch(batch), client.WithRedriveRate(rate))
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
	fl.Float64Var(&rate, "rate", 0, "move at most this many messages per second (0: no limit)")
	return cmd
}
