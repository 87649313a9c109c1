package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/quorumq/quorumq/client"
)

func init() { rootCmd.AddCommand(getCmd()) }

// maxHops bounds how many moves get follows (dead-lettered, redriven,
// dead-lettered again, ...).
const maxHops = 10

// fateJSON is the stable JSON form of one message as get finds it.
type fateJSON struct {
	Queue        string `json:"queue"`
	ID           uint64 `json:"id,omitempty"`
	DedupID      string `json:"dedup_id,omitempty"`
	Group        string `json:"group,omitempty"` // while the message is live
	State        string `json:"state"`
	EnqueuedAt   string `json:"enqueued_at,omitempty"`
	Attempts     uint32 `json:"attempts"`
	At           string `json:"at,omitempty"` // delayed until, leased until, removed at
	Consumer     string `json:"consumer,omitempty"`
	MovedTo      string `json:"moved_to,omitempty"`
	MovedToID    uint64 `json:"moved_to_id,omitempty"`
	Rejected     bool   `json:"rejected,omitempty"`
	ChangedIndex uint64 `json:"changed_index"`
	AppliedIndex uint64 `json:"applied_index"`
	// DeadLetter and LastNackReason as in peek.
	DeadLetter     *deadLetterJSON `json:"dead_letter,omitempty"`
	LastNackReason string          `json:"last_nack_reason,omitempty"`
}

func getCmd() *cobra.Command {
	var o client.LookupOptions
	cmd := clientVerb(&cobra.Command{
		Use:   "get QUEUE (--id N | --dedup-id X)",
		Short: "Tell what became of one message",
		Long: `Tell what became of one message of QUEUE, named by --id or by the
--dedup-id it was first enqueued with: ready, delayed until, leased until
(by whom, which attempt), waiting behind an earlier message of its
group, dead; or acked, dead-lettered, redriven, expired or purged, and
when; and its message group. A message that moved (dead-lettered,
redriven) is followed to its new queue and id. Each line gives the Raft
index of the command that last changed the message.

A queue remembers a removed message for its dedup window after removal,
and a dedup ID for the window from its first enqueue (default 10
minutes); past that, or for an id never issued, the answer is
"unknown". This is the honest answer to a send that ended with an
unknown outcome: look its dedup ID up (with --leader) instead of
guessing. Anything but "unknown" means it landed; "unknown" means it has
not landed by the time of the read (a request still on its way can land
a moment later): send it again with the same dedup ID, which is safe, as
both would be one message. A dead letter's dedup ID is not registered in its dead-letter
queue; get follows it there by id.

The node asked answers from the state it has applied, which on a
follower may lag the leader; --leader asks for the leader's view.`,
		Args: cobra.ExactArgs(1),
	}, func(ctx context.Context, c *client.Client, f *cliFlags, cmd *cobra.Command, args []string) error {
		var hops []fateJSON
		queue := args[0]
		for len(hops) < maxHops {
			fate, err := c.Lookup(ctx, queue, o)
			if err != nil {
				return err
			}
			hops = append(hops, fateJSONOf(fate))
			if fate.MovedTo == "" || fate.MovedToID == 0 {
				break
			}
			queue, o = fate.MovedTo, client.LookupOptions{ID: fate.MovedToID, Leader: o.Leader}
		}
		if f.json {
			return printJSON(cmd.OutOrStdout(), hops)
		}
		for _, h := range hops {
			if _, err := fmt.Fprintln(cmd.OutOrStdout(), h.String()); err != nil {
				return err
			}
		}
		if !o.Leader {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "(read from the state a node applied up to raft index %d, which may lag the leader; --leader for the leader's view)\n", hops[len(hops)-1].AppliedIndex)
			return err
		}
		return nil
	})
	fl := cmd.Flags()
	fl.Uint64Var(&o.ID, "id", 0, "the message id")
	fl.StringVar(&o.DedupID, "dedup-id", "", "the dedup ID the message was first enqueued with")
	fl.BoolVar(&o.Leader, "leader", false, "read the leader's view, after it confirms its leadership")
	return cmd
}

func fateJSONOf(f *client.MessageFate) fateJSON {
	j := fateJSON{
		Queue: f.Queue, ID: f.ID, DedupID: f.DedupID, Group: f.Group, State: string(f.State), Attempts: f.Attempts, Consumer: f.Consumer,
		MovedTo: f.MovedTo, MovedToID: f.MovedToID, Rejected: f.Rejected, ChangedIndex: f.ChangedIndex,
		AppliedIndex: f.AppliedIndex, DeadLetter: deadLetterJSONOf(f.DeadLetter), LastNackReason: f.LastNackReason,
	}
	if !f.EnqueuedAt.IsZero() {
		j.EnqueuedAt = fmtTime(f.EnqueuedAt)
	}
	if !f.At.IsZero() {
		j.At = fmtTime(f.At)
	}
	return j
}

// String is the message's fate in one line.
func (j fateJSON) String() string {
	var b strings.Builder
	b.WriteString(j.Queue)
	if j.ID != 0 {
		fmt.Fprintf(&b, "/%d", j.ID)
	}
	if j.DedupID != "" {
		fmt.Fprintf(&b, " (dedup ID %s)", j.DedupID)
	}
	b.WriteString(": ")
	switch client.MessageState(j.State) {
	case client.MessageUnknown:
		b.WriteString("unknown: never enqueued, or no longer remembered (its dedup window has passed)")
		return b.String()
	case client.MessageReady:
		fmt.Fprintf(&b, "ready, %d attempt(s) so far", j.Attempts)
	case client.MessageDelayed:
		fmt.Fprintf(&b, "delayed until %s", j.At)
	case client.MessageWaiting:
		fmt.Fprintf(&b, "waiting behind an earlier message of its group, %d attempt(s) so far", j.Attempts)
	case client.MessageLeased:
		holder := j.Consumer
		if holder == "" {
			holder = "an unnamed consumer"
		}
		fmt.Fprintf(&b, "leased until %s by %s, attempt %d", j.At, holder, j.Attempts)
	case client.MessageDead:
		fmt.Fprintf(&b, "dead since %s (no dead-letter queue to go to) after %d attempt(s)", j.At, j.Attempts)
	case client.MessageAcked:
		fmt.Fprintf(&b, "acked at %s, attempt %d", j.At, j.Attempts)
	case client.MessageDeadLettered:
		how := "max deliveries"
		if j.Rejected {
			how = "rejected"
		}
		fmt.Fprintf(&b, "dead-lettered (%s) at %s after %d attempt(s), to %s as id %d", how, j.At, j.Attempts, j.MovedTo, j.MovedToID)
	case client.MessageRedriven:
		fmt.Fprintf(&b, "redriven at %s, to %s as id %d", j.At, j.MovedTo, j.MovedToID)
	case client.MessageRemoved:
		fmt.Fprintf(&b, "removed at %s (by a cluster that did not record how)", j.At)
	default: // expired, purged
		fmt.Fprintf(&b, "%s at %s", j.State, j.At)
	}
	if j.Group != "" {
		fmt.Fprintf(&b, "; group %q", j.Group)
	}
	if j.EnqueuedAt != "" {
		fmt.Fprintf(&b, "; enqueued %s", j.EnqueuedAt)
	}
	if j.LastNackReason != "" {
		fmt.Fprintf(&b, "; last nack: %q", j.LastNackReason)
	}
	if j.DeadLetter != nil {
		fmt.Fprintf(&b, "; dead letter %s", j.DeadLetter)
	}
	fmt.Fprintf(&b, " [changed at raft index %d]", j.ChangedIndex)
	return b.String()
}
