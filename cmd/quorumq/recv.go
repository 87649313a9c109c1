package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/quorumq/quorumq/client"
	"github.com/quorumq/quorumq/fsm/limits"
)

func init() { rootCmd.AddCommand(recvCmd()) }

type recvJSON struct {
	Receipt    string            `json:"receipt"` // MESSAGE_ID/ATTEMPT, what ack, nack and extend take
	MessageID  uint64            `json:"message_id"`
	Attempt    uint32            `json:"attempt"`
	Body       string            `json:"body"`
	DedupID    string            `json:"dedup_id"`
	Group      string            `json:"group,omitempty"` // the message group; absent for none
	Attributes map[string]string `json:"attributes,omitempty"`
	EnqueuedAt string            `json:"enqueued_at"`
	LeaseUntil string            `json:"lease_until,omitempty"`
	Acked      bool              `json:"acked"`
	// LastNackReason: the reason of the last nack in this queue that gave one.
	LastNackReason string          `json:"last_nack_reason,omitempty"`
	DeadLetter     *deadLetterJSON `json:"dead_letter,omitempty"`
}

// deadLetterJSON is where a dead letter came from and why.
type deadLetterJSON struct {
	SourceQueue     string `json:"source_queue"`
	SourceMessageID uint64 `json:"source_message_id"`
	Reason          string `json:"reason"` // max_deliveries, rejected, unknown
	Attempts        uint32 `json:"attempts"`
	FirstEnqueuedAt string `json:"first_enqueued_at,omitempty"`
	LastNackReason  string `json:"last_nack_reason,omitempty"`
	RejectReason    string `json:"reject_reason,omitempty"`
}

func deadLetterJSONOf(d *client.DeadLetter) *deadLetterJSON {
	if d == nil {
		return nil
	}
	out := &deadLetterJSON{
		SourceQueue: d.SourceQueue, SourceMessageID: d.SourceMessageID, Reason: string(d.Reason),
		Attempts: d.Attempts, LastNackReason: d.LastNackReason, RejectReason: d.RejectReason,
	}
	if !d.FirstEnqueuedAt.IsZero() {
		out.FirstEnqueuedAt = fmtTime(d.FirstEnqueuedAt)
	}
	return out
}

// String is the dead letter in one table cell.
func (d *deadLetterJSON) String() string {
	s := fmt.Sprintf("from %s/%d after %d attempt(s): %s", d.SourceQueue, d.SourceMessageID, d.Attempts, d.Reason)
	if d.FirstEnqueuedAt != "" {
		s += ", first enqueued " + d.FirstEnqueuedAt
	}
	if d.LastNackReason != "" {
		s += fmt.Sprintf(", last nack: %q", d.LastNackReason)
	}
	if d.RejectReason != "" {
		s += fmt.Sprintf(", rejected: %q", d.RejectReason)
	}
	return s
}

func recvCmd() *cobra.Command {
	var f cliFlags
	var maxMsgs int
	var wait, visibility time.Duration
	var ack, autoAck bool
	var consumer string
	cmd := &cobra.Command{
		Use:   "recv QUEUE",
		Short: "Receive (lease) messages and print them",
		Long: `Receive up to --max messages and print them.

Without --ack or --auto-ack the messages stay leased for the visibility
timeout and are then delivered again (at-least-once): the printed receipt,
MESSAGE_ID/ATTEMPT, is what "quorumq ack", "nack" and "extend" take. --ack
acks them after they were printed; --auto-ack deletes them as they are
delivered (at-most-once). Each lease carries --consumer (default
host:pid), which peek --state leased and get show as its holder.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if ack && autoAck {
				return fmt.Errorf("--ack and --auto-ack: give one, not both (--auto-ack already deletes)")
			}
			if wait >= f.timeout {
				return fmt.Errorf("--wait %v must be shorter than --timeout %v", wait, f.timeout)
			}
			ctx, c, done, err := f.connect(cmd)
			if err != nil {
				return err
			}
			defer done()
			queue := args[0]
			opts := []client.ReceiveOption{client.WithWait(wait), client.WithVisibility(visibility)}
			if cmd.Flags().Changed("consumer") {
				if p := limits.ConsumerProblem(consumer); p != "" {
					return fmt.Errorf("--consumer: %s", p)
				}
				opts = append(opts, client.WithConsumer(consumer))
			}
			if autoAck {
				opts = append(opts, client.WithAutoAck())
			}
			msgs, err := c.Receive(ctx, queue, maxMsgs, opts...)
			if err != nil {
				return err
			}
			out := make([]recvJSON, len(msgs))
			for i, m := range msgs {
				out[i] = recvJSON{
					Receipt:   formatReceipt(m.Receipt),
					MessageID: m.Receipt.MessageID, Attempt: m.Receipt.Attempt, Body: string(m.Body),
					DedupID: m.DedupID, Group: m.Group, Attributes: m.Attributes, EnqueuedAt: fmtTime(m.EnqueuedAt), Acked: autoAck,
					LastNackReason: m.LastNackReason, DeadLetter: deadLetterJSONOf(m.DeadLetter),
				}
				if !autoAck {
					out[i].LeaseUntil = fmtTime(m.LeaseUntil)
				}
			}
			// Print before acking: a crash in between redelivers rather
			// than loses.
			if err := printMessages(cmd, &f, out); err != nil {
				return err
			}
			if ack && len(msgs) > 0 {
				rs := make([]client.Receipt, len(msgs))
				for i, m := range msgs {
					rs[i] = m.Receipt
				}
				if err := c.Ack(ctx, queue, rs...); err != nil {
					return err
				}
				if !f.json {
					fmt.Fprintf(cmd.ErrOrStderr(), "acked %d message(s)\n", len(rs))
				}
			}
			return nil
		},
	}
	addClientFlags(cmd, &f)
	fl := cmd.Flags()
	fl.IntVar(&maxMsgs, "max", 1, "receive at most this many messages")
	fl.DurationVar(&wait, "wait", 0, "long-poll up to this long when nothing is available (max 20s)")
	fl.DurationVar(&visibility, "visibility", 0, "lease length (default: the queue's visibility timeout)")
	fl.BoolVar(&ack, "ack", false, "ack the messages after printing them")
	fl.BoolVar(&autoAck, "auto-ack", false, "delete the messages as they are delivered (at-most-once)")
	fl.StringVar(&consumer, "consumer", client.DefaultConsumerName(), "consumer name the leases carry (at most 128 bytes)")
	return cmd
}

func printMessages(cmd *cobra.Command, f *cliFlags, ms []recvJSON) error {
	w := cmd.OutOrStdout()
	if f.json {
		return printJSON(w, ms)
	}
	if len(ms) == 0 {
		_, err := fmt.Fprintln(w, "no messages")
		return err
	}
	// The group, nack reason and dead-letter columns show only when a
	// message has one.
	grouped := slices.ContainsFunc(ms, func(m recvJSON) bool { return m.Group != "" })
	why := slices.ContainsFunc(ms, func(m recvJSON) bool { return m.LastNackReason != "" || m.DeadLetter != nil })
	rows := make([][]string, len(ms))
	for i, m := range ms {
		rows[i] = []string{m.Receipt, m.Body, attributesCell(m.Attributes), m.LeaseUntil}
		if grouped {
			rows[i] = append(rows[i], m.Group)
		}
		if why {
			dl := ""
			if m.DeadLetter != nil {
				dl = m.DeadLetter.String()
			}
			rows[i] = append(rows[i], m.LastNackReason, dl)
		}
	}
	header := []string{"RECEIPT", "BODY", "ATTRIBUTES", "LEASE_UNTIL"}
	if grouped {
		header = append(header, "GROUP")
	}
	if why {
		header = append(header, "LAST_NACK_REASON", "DEAD_LETTER")
	}
	return table(w, header, rows)
}

// attributesCell is a message's attributes in one table cell: k=v pairs
// in key order.
func attributesCell(attrs map[string]string) string {
	var kv []string
	for _, k := range slices.Sorted(maps.Keys(attrs)) {
		kv = append(kv, k+"="+attrs[k])
	}
	return strings.Join(kv, ",")
}
