package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/quorumq/quorumq/client"
)

func init() {
	queueCmd := &cobra.Command{
		Use:   "queue",
		Short: "Create, update, list, inspect, purge and delete queues",
	}
	queueCmd.AddCommand(queueCreateCmd(), queueUpdateCmd(), queueListCmd(), queueStatsCmd(), queueDeleteCmd(), queuePurgeCmd())
	rootCmd.AddCommand(queueCmd)
}

// settingsFlags are the queue settings create and update take; an unset
// flag means the server's default on create and "unchanged" on update.
type settingsFlags struct {
	s         client.QueueSettings
	forever   bool
	createDLQ bool
}

func (sf *settingsFlags) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.DurationVar(&sf.s.VisibilityTimeout, "visibility", 0, "lease length when a receive gives none (server default 30s)")
	fl.Uint32Var(&sf.s.MaxDeliveries, "max-deliveries", 0, "deliveries before a message is dead-lettered (0: unlimited)")
	fl.StringVar(&sf.s.DeadLetterQueue, "dlq", "", "dead-letter queue, which must exist (default: none; dead letters stay in the queue as dead)")
	fl.BoolVar(&sf.createDLQ, "create-dlq", false, "create the --dlq queue with default settings if it does not exist")
	fl.DurationVar(&sf.s.DedupWindow, "dedup-window", 0, "how long dedup and request IDs are remembered (server default 10m)")
	fl.DurationVar(&sf.s.Retention, "retention", 0, "max age of a message (server default 14 days)")
	fl.BoolVar(&sf.forever, "keep-forever", false, "no retention limit")
	fl.Uint64Var(&sf.s.MaxDepth, "max-depth", 0, "max messages in the queue; enqueues beyond are rejected (0: unlimited)")
}

// options returns the client options the flags give.
func (sf *settingsFlags) options() []client.QueueOption {
	if sf.createDLQ {
		return []client.QueueOption{client.WithCreateDLQ()}
	}
	return nil
}

// settings returns the settings the flags give.
func (sf *settingsFlags) settings() (client.QueueSettings, error) {
	s := sf.s
	if sf.forever {
		if s.Retention != 0 {
			return s, fmt.Errorf("--retention and --keep-forever: give one, not both")
		}
		s.Retention = client.NoRetentionLimit
	}
	return s, nil
}

func queueCreateCmd() *cobra.Command {
	var f cliFlags
	var sf settingsFlags
	var ifNotExists bool
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a queue (unset settings take the server's defaults)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := sf.settings()
			if err != nil {
				return err
			}
			ctx, c, done, err := f.connect(cmd)
			if err != nil {
				return err
			}
			defer done()
			var q *client.QueueInfo
			if ifNotExists {
				q, err = c.EnsureQueue(ctx, args[0], s, sf.options()...)
			} else {
				q, err = c.CreateQueue(ctx, args[0], s, sf.options()...)
			}
			if err != nil {
				return err
			}
			return printQueue(cmd, &f, q)
		},
	}
	addClientFlags(cmd, &f)
	sf.add(cmd)
	cmd.Flags().BoolVar(&ifNotExists, "if-not-exists", false, "succeed when the queue exists (and keep its settings)")
	return cmd
}

func queueUpdateCmd() *cobra.Command {
	var f cliFlags
	var sf settingsFlags
	cmd := &cobra.Command{
		Use:   "update NAME",
		Short: "Change the settings given as flags and keep the others",
		Long: `Change the settings given as flags and keep the others.

An unset or zero flag leaves its setting as it is, so a setting cannot be
changed back to "none" (unlimited deliveries, no dead-letter queue, no max
depth); retention can, with --keep-forever.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := sf.settings()
			if err != nil {
				return err
			}
			if s == (client.QueueSettings{}) {
				return fmt.Errorf("queue update %s: give at least one setting to change (--visibility, --max-deliveries, --dlq, --dedup-window, --retention, --keep-forever, --max-depth)", args[0])
			}
			ctx, c, done, err := f.connect(cmd)
			if err != nil {
				return err
			}
			defer done()
			q, err := c.UpdateQueue(ctx, args[0], s, sf.options()...)
			if err != nil {
				return err
			}
			return printQueue(cmd, &f, q)
		},
	}
	addClientFlags(cmd, &f)
	sf.add(cmd)
	return cmd
}

func printQueue(cmd *cobra.Command, f *cliFlags, q *client.QueueInfo) error {
	w := cmd.OutOrStdout()
	if f.json {
		return printJSON(w, queueOf(q))
	}
	j := queueOf(q)
	return table(w, []string{"FIELD", "VALUE"}, [][]string{
		{"name", j.Name},
		{"created_at", j.CreatedAt},
		{"visibility_timeout", j.VisibilityTimeout},
		{"max_deliveries", u(uint64(j.MaxDeliveries))},
		{"dead_letter_queue", j.DeadLetterQueue},
		{"dedup_window", j.DedupWindow},
		{"retention", j.Retention},
		{"max_depth", u(j.MaxDepth)},
		{"ready", u(j.Ready)},
		{"leased", u(j.Leased)},
		{"delayed", u(j.Delayed)},
		{"waiting", u(j.Waiting)},
		{"dead_lettered", u(j.DeadLettered)},
		{"dead", u(j.Dead)},
		{"groups", u(j.Groups)},
		{"oldest_ready_age", j.OldestReadyAge},
		{"enqueued_total", u(j.EnqueuedTotal)},
		{"delivered_total", u(j.DeliveredTotal)},
		{"acked_total", u(j.AckedTotal)},
		{"redelivered_total", u(j.RedeliveredTotal)},
		{"dedup_hits_total", u(j.DedupHitsTotal)},
		{"expired_total", u(j.ExpiredTotal)},
		{"dead_lettered_total", u(j.DeadLetteredTotal)},
		{"redriven_total", u(j.RedrivenTotal)},
	})
}

func queueListCmd() *cobra.Command {
	return clientVerb(&cobra.Command{
		Use:   "list",
		Short: "List queues with their counters",
		Args:  cobra.NoArgs,
	}, func(ctx context.Context, c *client.Client, f *cliFlags, cmd *cobra.Command, args []string) error {
		qs, err := c.ListQueues(ctx)
		if err != nil {
			return err
		}
		if f.json {
			out := make([]queueJSON, len(qs))
			for i, q := range qs {
				out[i] = queueOf(q)
			}
			return printJSON(cmd.OutOrStdout(), out)
		}
		return queueTable(cmd.OutOrStdout(), qs)
	})
}

func queueStatsCmd() *cobra.Command {
	return clientVerb(&cobra.Command{
		Use:   "stats NAME",
		Short: "Show a queue's settings and counters",
		Args:  cobra.ExactArgs(1),
	}, func(ctx context.Context, c *client.Client, f *cliFlags, cmd *cobra.Command, args []string) error {
		q, err := c.GetQueue(ctx, args[0])
		if err != nil {
			return err
		}
		return printQueue(cmd, f, q)
	})
}

func queueDeleteCmd() *cobra.Command {
	var force bool
	cmd := clientVerb(&cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a queue and its messages",
		Long: `Delete a queue and its messages.

A queue that is another queue's dead-letter queue is deleted only with
--force; the dead letters of that queue then stay in it as dead (the
"dead" row of queue stats), never delivered and never dropped.`,
		Args: cobra.ExactArgs(1),
	}, func(ctx context.Context, c *client.Client, f *cliFlags, cmd *cobra.Command, args []string) error {
		var opts []client.QueueOption
		if force {
			opts = append(opts, client.WithForce())
		}
		if err := c.DeleteQueue(ctx, args[0], opts...); err != nil {
			return err
		}
		return report(cmd, f, map[string]any{"deleted": args[0]}, "deleted queue %s\n", args[0])
	})
	cmd.Flags().BoolVar(&force, "force", false, "delete it even if it is another queue's dead-letter queue")
	return cmd
}

func queuePurgeCmd() *cobra.Command {
	return clientVerb(&cobra.Command{
		Use:   "purge NAME",
		Short: "Remove every message of a queue",
		Args:  cobra.ExactArgs(1),
	}, func(ctx context.Context, c *client.Client, f *cliFlags, cmd *cobra.Command, args []string) error {
		n, err := c.Purge(ctx, args[0])
		if err != nil {
			return err
		}
		return report(cmd, f, map[string]any{"queue": args[0], "purged": n}, "purged %d message(s) from %s\n", n, args[0])
	})
}

// report prints v as JSON with --json, else the formatted line.
func report(cmd *cobra.Command, f *cliFlags, v any, format string, args ...any) error {
	if f.json {
		return printJSON(cmd.OutOrStdout(), v)
	}
	_, err := fmt.Fprintf(cmd.OutOrStdout(), format, args...)
	return err
}

// fmtTime prints a time as UTC RFC 3339 with milliseconds.
func fmtTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z07:00") }
