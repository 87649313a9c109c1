package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/quorumq/quorumq/client"
	"github.com/quorumq/quorumq/fsm/limits"
)

func init() { rootCmd.AddCommand(sendCmd()) }

type sendJSON struct {
	Line      int    `json:"line,omitempty"`
	MessageID uint64 `json:"message_id"`
	DedupID   string `json:"dedup_id"`
	Duplicate bool   `json:"duplicate"`
}

func sendCmd() *cobra.Command {
	var f cliFlags
	var dedupID, dedupPrefix, group string
	var delay time.Duration
	var attrs []string
	cmd := &cobra.Command{
		Use:   "send QUEUE [BODY]",
		Short: "Enqueue BODY, or one message per line of stdin",
		Long: `Enqueue BODY as one message, or, without BODY, each line of stdin as a
message (batched through the asynchronous producer).

Every message gets a dedup ID: --dedup-id for BODY, --dedup-prefix plus the
line number for stdin, otherwise a fresh ULID. Running the same command again
with the same IDs within the queue's dedup window enqueues nothing twice; the
output marks such messages as duplicates.

--group puts every message sent in that message group: the cluster
delivers a group's messages one at a time in the order they were sent,
the next once the one before is acked.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			attributes, err := parseAttrs(attrs)
			if err != nil {
				return err
			}
			if len(args) == 1 && dedupID != "" {
				return fmt.Errorf("--dedup-id applies to a single BODY; for stdin use --dedup-prefix")
			}
			if len(args) == 2 && dedupPrefix != "" {
				return fmt.Errorf("--dedup-prefix applies to stdin lines; for a single BODY use --dedup-id")
			}
			if p := limits.GroupProblem(group); p != "" {
				return fmt.Errorf("--group: %s", p)
			}
			ctx, c, done, err := f.connect(cmd)
			if err != nil {
				return err
			}
			defer done()
			queue := args[0]
			w := cmd.OutOrStdout()
			if len(args) == 2 {
				r, err := c.Send(ctx, queue, []byte(args[1]), client.WithDedupID(dedupID),
					client.WithDelay(delay), client.WithAttributes(attributes), client.WithGroup(group))
				if err != nil {
					return err
				}
				if f.json {
					return printJSON(w, sendJSON{MessageID: r.MessageID, DedupID: r.DedupID, Duplicate: r.Duplicate})
				}
				return table(w, []string{"MESSAGE_ID", "DEDUP_ID", "DUPLICATE"},
					[][]string{{u(r.MessageID), r.DedupID, fmt.Sprint(r.Duplicate)}})
			}

			p := c.NewProducer()
			defer p.Close()
			var futs []*client.SendFuture
			sc := bufio.NewScanner(cmd.InOrStdin())
			sc.Buffer(make([]byte, 64<<10), 2<<20)
			for sc.Scan() {
				m := client.OutMessage{Body: []byte(sc.Text()), Delay: delay, Attributes: attributes, Group: group}
				if dedupPrefix != "" {
					m.DedupID = fmt.Sprintf("%s%d", dedupPrefix, len(futs)+1)
				}
				futs = append(futs, p.SendAsync(ctx, queue, m))
			}
			if err := sc.Err(); err != nil {
				return fmt.Errorf("stdin line %d: %w", len(futs)+1, err)
			}
			rows := make([][]string, 0, len(futs))
			enc := json.NewEncoder(w)
			var failed int
			var firstErr error
			for i, fu := range futs {
				r, err := fu.Wait(ctx)
				if err != nil {
					failed++
					if firstErr == nil {
						firstErr = fmt.Errorf("line %d: %w", i+1, err)
					}
					continue
				}
				if f.json {
					if err := enc.Encode(sendJSON{Line: i + 1, MessageID: r.MessageID, DedupID: r.DedupID, Duplicate: r.Duplicate}); err != nil {
						return err
					}
				} else {
					rows = append(rows, []string{fmt.Sprint(i + 1), u(r.MessageID), r.DedupID, fmt.Sprint(r.Duplicate)})
				}
			}
			if !f.json {
				if err := table(w, []string{"LINE", "MESSAGE_ID", "DEDUP_ID", "DUPLICATE"}, rows); err != nil {
					return err
				}
			}
			if firstErr != nil {
				return fmt.Errorf("%d of %d message(s) not sent; first: %w", failed, len(futs), firstErr)
			}
			return nil
		},
	}
	addClientFlags(cmd, &f)
	fl := cmd.Flags()
	fl.StringVar(&dedupID, "dedup-id", "", "dedup ID of BODY (default: a fresh ULID)")
	fl.StringVar(&dedupPrefix, "dedup-prefix", "", "stdin mode: dedup ID of line N is PREFIX+N, so a re-run sends nothing twice")
	fl.DurationVar(&delay, "delay", 0, "deliver no earlier than this from now")
	fl.StringArrayVar(&attrs, "attr", nil, "attribute key=value (repeatable)")
	fl.StringVar(&group, "group", "", "message group of the messages: delivered one at a time, in order (at most 128 bytes)")
	return cmd
}

// parseAttrs turns key=value flags into a map.
func parseAttrs(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--attr %q: want key=value with a non-empty key", kv)
		}
		out[k] = v
	}
	return out, nil
}
