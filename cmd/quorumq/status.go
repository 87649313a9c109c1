package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
)

func init() { rootCmd.AddCommand(statusCmd()) }

type nodeJSON struct {
	ID           string `json:"id"`
	APIAddr      string `json:"api_addr"`
	RaftAddr     string `json:"raft_addr"`
	State        string `json:"state"`
	GossipState  string `json:"gossip_state"`
	Voter        bool   `json:"voter"`
	Term         uint64 `json:"term"`
	LastLogIndex uint64 `json:"last_log_index"`
	CommitIndex  uint64 `json:"commit_index"`
	AppliedIndex uint64 `json:"applied_index"`
	LastContact  string `json:"last_contact"`
	StateHash    string `json:"state_hash"`
	// ClockOffset is the node's wall clock minus cluster time as the
	// leader measures it; "" when it has no recent reading.
	ClockOffset string `json:"clock_offset"`
	// LogCheck is the online log verification: log ranges verified and
	// the mismatches found (read: storage corruption; write: in-flight).
	LogCheck logCheckJSON `json:"log_check"`
	Error    string       `json:"error,omitempty"`
}

type logCheckJSON struct {
	RangesVerified  uint64 `json:"ranges_verified"`
	ReadMismatches  uint64 `json:"read_mismatches"`
	WriteMismatches uint64 `json:"write_mismatches"`
	LastError       string `json:"last_error,omitempty"`
}

// String is the LOG_CHECK column: "ok/N" for N ranges verified without a
// mismatch, else the mismatches by kind.
func (l logCheckJSON) String() string {
	if l.ReadMismatches == 0 && l.WriteMismatches == 0 {
		return fmt.Sprintf("ok/%d", l.RangesVerified)
	}
	return fmt.Sprintf("MISMATCH read=%d write=%d", l.ReadMismatches, l.WriteMismatches)
}

type memberJSON struct {
	ID       string `json:"id"`
	APIAddr  string `json:"api_addr"`
	State    string `json:"state"`
	Suffrage string `json:"raft_suffrage"`
}

type statusJSON struct {
	LeaderID      string       `json:"leader_id"`
	LeaderAPIAddr string       `json:"leader_api_addr"`
	Nodes         []nodeJSON   `json:"nodes"`
	Members       []memberJSON `json:"members"`
	Queues        []queueJSON  `json:"queues"`
}

func statusCmd() *cobra.Command {
	var f cliFlags
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show members, leader, Raft indices, clock offsets and queues",
		Long: `Show the leader; per node its Raft state, gossip state, Raft indices and
the offset of its wall clock from cluster time as the leader measures it
("-": no recent reading); the gossip members; and the queues.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, c, done, err := f.connect(cmd)
			if err != nil {
				return err
			}
			defer done()
			st, err := c.Status(ctx)
			if err != nil {
				return err
			}
			members, err := c.Members(ctx)
			if err != nil {
				return err
			}
			qs, err := c.ListQueues(ctx)
			if err != nil {
				return err
			}
			out := statusJSON{LeaderID: st.GetLeaderId(), LeaderAPIAddr: st.GetLeaderApiAddr(),
				Nodes: []nodeJSON{}, Members: []memberJSON{}, Queues: []queueJSON{}}
			gossip := map[string]string{}
			for _, m := range members {
				gossip[m.GetId()] = m.GetState()
			}
			for _, n := range st.GetNodes() {
				nj := nodeJSON{
					ID: n.GetId(), APIAddr: n.GetApiAddr(), RaftAddr: n.GetRaftAddr(), State: n.GetState(),
					Voter: n.GetVoter(), Term: n.GetTerm(), LastLogIndex: n.GetLastLogIndex(),
					CommitIndex: n.GetCommitIndex(), AppliedIndex: n.GetAppliedIndex(),
					LastContact: time.Duration(n.GetLastContactNs()).Round(time.Millisecond).String(),
					StateHash:   n.GetStateHash(), Error: n.GetError(), GossipState: gossip[n.GetId()],
					LogCheck: logCheckJSON{RangesVerified: n.GetLogRangesVerified(), ReadMismatches: n.GetLogReadMismatches(),
						WriteMismatches: n.GetLogWriteMismatches(), LastError: n.GetLogVerifyError()},
				}
				if n.ClockOffsetNs != nil {
					nj.ClockOffset = time.Duration(n.GetClockOffsetNs()).Round(time.Millisecond).String()
				}
				out.Nodes = append(out.Nodes, nj)
			}
			for _, m := range members {
				out.Members = append(out.Members, memberJSON{ID: m.GetId(), APIAddr: m.GetApiAddr(), State: m.GetState(), Suffrage: m.GetRaftSuffrage()})
			}
			for _, q := range qs {
				out.Queues = append(out.Queues, queueOf(q))
			}
			w := cmd.OutOrStdout()
			if f.json {
				return printJSON(w, out)
			}
			leader := out.LeaderID
			if leader == "" {
				leader = "(none)"
			} else {
				leader += " at " + out.LeaderAPIAddr
			}
			fmt.Fprintf(w, "leader: %s\n\n", leader)
			rows := make([][]string, 0, len(out.Nodes))
			for _, n := range out.Nodes {
				hash := n.StateHash
				if len(hash) > 12 {
					hash = hash[:12]
				}
				gossipState, offset := n.GossipState, n.ClockOffset
				if gossipState == "" {
					gossipState = "-" // not in this node's gossip view
				}
				if offset == "" {
					offset = "-" // the leader has no recent reading
				}
				rows = append(rows, []string{n.ID, n.APIAddr, n.State, gossipState, fmt.Sprint(n.Voter), u(n.Term),
					u(n.LastLogIndex), u(n.CommitIndex), u(n.AppliedIndex), n.LastContact, offset, hash, n.LogCheck.String(), n.Error})
			}
			if err := table(w, []string{"NODE", "API", "STATE", "GOSSIP", "VOTER", "TERM", "LAST_LOG", "COMMIT", "APPLIED", "LAST_CONTACT", "CLOCK_OFFSET", "STATE_HASH", "LOG_CHECK", "ERROR"}, rows); err != nil {
				return err
			}
			fmt.Fprintln(w)
			rows = rows[:0]
			for _, m := range out.Members {
				rows = append(rows, []string{m.ID, m.APIAddr, m.State, m.Suffrage})
			}
			if err := table(w, []string{"MEMBER", "API", "GOSSIP_STATE", "RAFT"}, rows); err != nil {
				return err
			}
			fmt.Fprintln(w)
			if len(qs) == 0 {
				_, err := fmt.Fprintln(w, "no queues")
				return err
			}
			return queueTable(w, qs)
		},
	}
	addClientFlags(cmd, &f)
	return cmd
}
