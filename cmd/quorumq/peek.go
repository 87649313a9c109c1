package main

import (
	"context"
	"fmt"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/quorumq/quorumq/client"
)

func init() { rootCmd.AddCommand(peekCmd()) }

// peekJSON is the stable JSON form of one page of peek.
type peekJSON struct {
	Queue    string            `json:"queue"`
	Messages []peekMessageJSON `json:"messages"`
	// NextID is the --from of the next page; 0 when no message is left.
	NextID       uint64 `json:"next_id"`
	AppliedIndex uint64 `json:"applied_index"`
}

type peekMessageJSON struct {
	ID    uint64 `json:"id"`
	State string `json:"state"` // ready, delayed, leased, dead, waiting
	// Group: the message group; absent for none.
	Group    string `json:"group,omitempty"`
	Attempts uint32 `json:"attempts"`
	Body     string `json:"body,omitempty"`
	BodySize int    `json:"body_size"`
	DedupID  string `json:"dedup_id,omitempty"`
	// Until: when a delayed message becomes ready or a lease ends.
	Until          string            `json:"until,omitempty"`
	Attributes     map[string]string `json:"attributes,omitempty"`
	EnqueuedAt     string            `json:"enqueued_at"`
	LastNackReason string            `json:"last_nack_reason,omitempty"`
	DeadLetter     *deadLetterJSON   `json:"dead_letter,omitempty"`
	// Consumer: who holds the lease of a leased message.
	Consumer string `json:"consumer,omitempty"`
}

func peekCmd() *cobra.Command {
	var o client.PeekOptions
	var state string
	cmd := clientVerb(&cobra.Command{
		Use:   "peek QUEUE",
		Short: "Show a queue's messages without leasing them",
		Long: `Show up to --max messages of QUEUE (1 to 100), lowest id first from
--from, with their state (ready, delayed, leased, dead, or waiting:
held behind an earlier message of its group), message group, attempts,
body (or only its size with --no-body), attributes, dead-letter origin
and last nack reason, and for a leased message who holds the lease (its
receive's consumer name) until when. --state shows only messages in
that state.

A peek leases nothing, counts no attempt and writes nothing to the Raft
log. The node asked answers from the state it has applied, which on a
follower may lag the leader; --leader asks for the leader's view. When
more messages are left, the --from of the next page is printed.`,
		Args: cobra.ExactArgs(1),
	}, func(ctx context.Context, c *client.Client, f *cliFlags, cmd *cobra.Command, args []string) error {
		o.State = client.PeekState(state)
		page, err := c.Peek(ctx, args[0], o)
		if err != nil {
			return err
		}
		out := peekJSON{Queue: args[0], Messages: []peekMessageJSON{}, NextID: page.Next, AppliedIndex: page.AppliedIndex}
		for _, m := range page.Messages {
			j := peekMessageJSON{
				ID: m.ID, State: string(m.State), Group: m.Group, Attempts: m.Attempts, Body: string(m.Body), BodySize: m.BodySize,
				DedupID: m.DedupID, Attributes: m.Attributes, EnqueuedAt: fmtTime(m.EnqueuedAt),
				LastNackReason: m.LastNackReason, DeadLetter: deadLetterJSONOf(m.DeadLetter), Consumer: m.Consumer,
			}
			if !m.Until.IsZero() {
				j.Until = fmtTime(m.Until)
			}
			out.Messages = append(out.Messages, j)
		}
		if f.json {
			return printJSON(cmd.OutOrStdout(), out)
		}
		return printPeek(cmd, out, o.NoBody)
	})
	fl := cmd.Flags()
	fl.Uint64Var(&o.From, "from", 0, "show messages from this id on (a page's next id)")
	fl.IntVar(&o.Max, "max", client.DefaultPeekMax, "show at most this many messages (1 to 100)")
	fl.StringVar(&state, "state", "all", "show only messages in this state: ready, delayed, leased, dead, waiting or all")
	fl.BoolVar(&o.NoBody, "no-body", false, "show each body's size instead of the body")
	fl.BoolVar(&o.Leader, "leader", false, "read the leader's view, after it confirms its leadership")
	return cmd
}

func printPeek(cmd *cobra.Command, p peekJSON, noBody bool) error {
	w := cmd.OutOrStdout()
	if len(p.Messages) == 0 {
		_, err := fmt.Fprintln(w, "no messages")
		return err
	}
	bodyCol := "BODY"
	if noBody {
		bodyCol = "BODY_SIZE"
	}
	rows := make([][]string, len(p.Messages))
	for i, m := range p.Messages {
		body := m.Body
		if noBody {
			body = strconv.Itoa(m.BodySize)
		}
		dl := ""
		if m.DeadLetter != nil {
			dl = m.DeadLetter.String()
		}
		rows[i] = []string{strconv.FormatUint(m.ID, 10), m.State, m.Group, strconv.FormatUint(uint64(m.Attempts), 10), body,
			attributesCell(m.Attributes), m.Until, m.Consumer, m.LastNackReason, dl}
	}
	if err := table(w, []string{"ID", "STATE", "GROUP", "ATTEMPTS", bodyCol, "ATTRIBUTES", "UNTIL", "HOLDER", "LAST_NACK_REASON", "DEAD_LETTER"}, rows); err != nil {
		return err
	}
	if p.NextID != 0 {
		_, err := fmt.Fprintf(w, "more from --from %d\n", p.NextID)
		return err
	}
	return nil
}
