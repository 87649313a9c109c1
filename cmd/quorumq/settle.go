package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/quorumq/quorumq/client"
)

func init() { rootCmd.AddCommand(ackCmd(), nackCmd(), rejectCmd(), extendCmd()) }

// formatReceipt is the text form of a receipt that recv prints and
// parseReceipts reads: MESSAGE_ID/ATTEMPT.
func formatReceipt(r client.Receipt) string {
	return strconv.FormatUint(r.MessageID, 10) + "/" + strconv.FormatUint(uint64(r.Attempt), 10)
}

// parseReceipts reads receipts of queue in the form recv prints them; the
// error names the argument that is not one.
func parseReceipts(queue string, args []string) ([]client.Receipt, error) {
	rs := make([]client.Receipt, len(args))
	for i, a := range args {
		id, attempt, ok := strings.Cut(a, "/")
		if !ok {
			return nil, fmt.Errorf("receipt %q: want MESSAGE_ID/ATTEMPT as recv prints it (e.g. 12/1)", a)
		}
		m, err := strconv.ParseUint(id, 10, 64)
		if err != nil || m == 0 {
			return nil, fmt.Errorf("receipt %q: message ID must be a number from 1, got %q", a, id)
		}
		n, err := strconv.ParseUint(attempt, 10, 32)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("receipt %q: attempt must be a number from 1, got %q", a, attempt)
		}
		rs[i] = client.Receipt{Queue: queue, MessageID: m, Attempt: uint32(n)}
	}
	return rs, nil
}

// settleVerb completes cmd as a verb over receipts: QUEUE RECEIPT...;
// settle does the call, and done ("acked 2 message(s)") is what it reports.
func settleVerb(cmd *cobra.Command, done func(n int) (key, text string), settle func(ctx context.Context, c *client.Client, queue string, rs []client.Receipt) error) *cobra.Command {
	cmd.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) < 2 {
			return fmt.Errorf("%s: want QUEUE and at least one RECEIPT (MESSAGE_ID/ATTEMPT, as recv prints it), got %d argument(s)", cmd.Name(), len(args))
		}
		return nil
	}
	var rs []client.Receipt
	cmd.PreRunE = func(cmd *cobra.Command, args []string) error {
		var err error
		rs, err = parseReceipts(args[0], args[1:])
		return err
	}
	return clientVerb(cmd, func(ctx context.Context, c *client.Client, f *cliFlags, cmd *cobra.Command, args []string) error {
		if err := settle(ctx, c, args[0], rs); err != nil {
			return err
		}
		key, text := done(len(rs))
		return report(cmd, f, map[string]any{key: len(rs)}, "%s\n", text)
	})
}

func ackCmd() *cobra.Command {
	return settleVerb(&cobra.Command{
		Use:   "ack QUEUE RECEIPT...",
		Short: "Delete received messages (receipts as recv prints them, MESSAGE_ID/ATTEMPT)",
		Long: `Delete the messages of the receipts, as recv prints them (MESSAGE_ID/ATTEMPT).

A receipt whose message was delivered again since fails with "lease lost":
the message is someone else's now. Acking an acked message again with the
same receipt succeeds.`,
	}, func(n int) (string, string) { return "acked", fmt.Sprintf("acked %d message(s)", n) },
		func(ctx context.Context, c *client.Client, queue string, rs []client.Receipt) error {
			return c.Ack(ctx, queue, rs...)
		})
}

func nackCmd() *cobra.Command {
	var delay time.Duration
	var reason string
	cmd := settleVerb(&cobra.Command{
		Use:   "nack QUEUE RECEIPT...",
		Short: "Give received messages back, available again after --delay",
		Long: `Give the messages of the receipts back (receipts as recv prints them,
MESSAGE_ID/ATTEMPT): they are available again after --delay (default at once).

--reason says why: recv shows it on the next delivery (LAST_NACK_REASON),
and a message that is dead-lettered later carries it into its DLQ.`,
	}, func(n int) (string, string) { return "nacked", fmt.Sprintf("nacked %d message(s)", n) },
		func(ctx context.Context, c *client.Client, queue string, rs []client.Receipt) error {
			return c.NackWithReason(ctx, queue, delay, reason, rs...)
		})
	cmd.Flags().DurationVar(&delay, "delay", 0, "make the messages available again after this long (max 12h)")
	cmd.Flags().StringVar(&reason, "reason", "", "why the messages are given back (at most 1024 bytes; default: keep the last reason given)")
	return cmd
}

func rejectCmd() *cobra.Command {
	var reason string
	cmd := settleVerb(&cobra.Command{
		Use:   "reject QUEUE RECEIPT...",
		Short: "Send received messages to the queue's dead-letter queue now",
		Long: `Send the messages of the receipts (as recv prints them, MESSAGE_ID/ATTEMPT)
to the queue's dead-letter queue now, with --reason as the dead letter's
reject reason. A receipt whose message was delivered again since fails
with "lease lost", as for ack; rejecting again with the same receipt
succeeds.`,
	}, func(n int) (string, string) { return "rejected", fmt.Sprintf("rejected %d message(s)", n) },
		func(ctx context.Context, c *client.Client, queue string, rs []client.Receipt) error {
			return c.Reject(ctx, queue, reason, rs...)
		})
	cmd.Flags().StringVar(&reason, "reason", "", "why the messages are rejected (at most 1024 bytes)")
	return cmd
}

func extendCmd() *cobra.Command {
	var visibility time.Duration
	cmd := settleVerb(&cobra.Command{
		Use:   "extend QUEUE RECEIPT...",
		Short: "Renew the leases of received messages for --visibility from now",
		Long: `Renew the leases of the receipts (as recv prints them, MESSAGE_ID/ATTEMPT)
until --visibility from now (default: the queue's visibility timeout).`,
	}, func(n int) (string, string) { return "extended", fmt.Sprintf("extended %d lease(s)", n) },
		func(ctx context.Context, c *client.Client, queue string, rs []client.Receipt) error {
			return c.Extend(ctx, queue, visibility, rs...)
		})
	cmd.Flags().DurationVar(&visibility, "visibility", 0, "new lease length from now (default: the queue's visibility timeout; max 12h)")
	return cmd
}
